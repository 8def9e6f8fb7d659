"""Read-out, losses, clipping, optimizers and the training loop (gpulstm.lab.train)."""
import math

import numpy as np
import pytest

import gpulstm as gl
from gpulstm.backends import get_backend
from gpulstm.lab.train import (CELLS, Adam, Readout, RMSProp, accuracy, clip_grad_norm, make_cell,
                           mse_loss, softmax_xent, train)

from numgrad import numeric_grad

EX = get_backend("numpy")


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_readout_and_loss_gradients_match_finite_differences(loss, rng):
    N, F, K = 6, 5, 4
    h = rng.standard_normal((N, F))
    ro = Readout(F, K, EX, np.float64, seed=1)
    ro.params["bias"][...] = rng.standard_normal(K)
    target = rng.standard_normal((N, K)) if loss == "mse" else rng.integers(0, K, N)
    fn = mse_loss if loss == "mse" else softmax_xent

    def value():
        return float(fn(np, ro.forward(h), target)[0])

    _, dz = fn(np, ro.forward(h), target)
    dh = ro.backward(dz)
    np.testing.assert_allclose(dh, numeric_grad(value, h), rtol=1e-6, atol=1e-9)
    for k, p in ro.params.items():
        np.testing.assert_allclose(ro.grads[k], numeric_grad(value, p), rtol=1e-6, atol=1e-9)


def test_softmax_xent_value_and_accuracy():
    logits = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 5.0]])
    labels = np.array([0, 0, 0])
    loss, _ = softmax_xent(np, logits, labels)
    expect = np.mean([math.log(2), math.log(1 + math.exp(-2)), math.log(1 + math.exp(5))])
    assert float(loss) == pytest.approx(expect)
    assert float(accuracy(np, logits, labels)) == pytest.approx(2 / 3)  # ties -> first class


def test_adam_step_by_hand():
    p = {"w": np.array([1.0, -2.0])}
    opt = Adam(p, np, lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    g1, g2 = np.array([0.5, -1.0]), np.array([0.1, 0.2])
    opt.step({"w": g1})
    # first step: m_hat = g, v_hat = g^2 -> p -= lr * g / (|g| + eps)
    np.testing.assert_allclose(p["w"], [1.0 - 0.1 * 0.5 / (0.5 + 1e-8), -2.0 + 0.1 * 1 / (1 + 1e-8)])
    before = p["w"].copy()
    opt.step({"w": g2})
    m = 0.9 * 0.1 * g1 + 0.1 * g2
    v = 0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2
    step = 0.1 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(p["w"], before - step, rtol=1e-12)


def test_rmsprop_step_by_hand():
    p = {"w": np.array([1.0])}
    opt = RMSProp(p, np, lr=0.01, alpha=0.9, eps=1e-8)
    opt.step({"w": np.array([2.0])})
    np.testing.assert_allclose(p["w"], [1.0 - 0.01 * 2.0 / (math.sqrt(0.1 * 4.0) + 1e-8)])


def test_clip_grad_norm():
    a, b = np.array([3.0, 0.0]), np.array([[4.0]])
    total = clip_grad_norm(np, [a, b], 1.0)
    assert float(total) == pytest.approx(5.0)
    np.testing.assert_allclose(np.concatenate([a, b.ravel()]), [0.6, 0.0, 0.8])
    c = np.array([0.3, 0.4])
    clip_grad_norm(np, [c], 1.0)  # below the threshold: untouched
    np.testing.assert_array_equal(c, [0.3, 0.4])


def test_clip_grad_norm_float32_beyond_float32_range():
    """Elements of 1e20 square past float32's max (3.4e38): the norm is still right and the
    gradients are clipped, not zeroed or skipped."""
    g = [np.full(4, 1e20, np.float32), np.full((2, 2), -1e20, np.float32)]
    total = clip_grad_norm(np, g, 1.0)
    assert total.dtype == np.float64 and float(total) == pytest.approx(1e20 * math.sqrt(8), rel=1e-6)
    joint = math.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in g))
    assert joint == pytest.approx(1.0, rel=1e-5)
    assert all(x.dtype == np.float32 and np.all(np.isfinite(x)) for x in g)


def test_clip_grad_norm_non_finite_is_reported_not_applied():
    g = [np.array([1.0, np.inf], np.float32), np.array([2.0], np.float32)]
    total = clip_grad_norm(np, g, 1.0)
    assert not np.isfinite(total)
    np.testing.assert_array_equal(g[1], [2.0])  # untouched: the caller decides


def test_training_stops_at_the_criterion():
    r = train("adding", "lstm_fb1", 6, steps=2000, batch=16, hidden=8, lr=3e-2, seed=0,
              eval_every=20, eval_size=64, test_size=64, stop_at_criterion=True)
    assert r.updates_to_criterion is not None and r.updates == r.updates_to_criterion < 2000
    assert r.updates_to_criterion % 20 == 0 and r.evals[-1][2] < 0.01
    assert all(e[2] >= 0.01 for e in r.evals[:-1])
    assert len(r.curve_loss) == r.updates and r.sequences_to_pass == r.updates * 16
    assert r.steps == 2000 and not r.diverged


def test_training_stops_when_the_gradient_is_not_finite(monkeypatch):
    import gpulstm.lab.train as tr
    real = tr.clip_grad_norm
    calls = []

    def poisoned(xp, grads, max_norm):  # a NaN gradient at the third update
        calls.append(1)
        if len(calls) == 3:
            grads[0][...] = np.nan
        return real(xp, grads, max_norm)

    monkeypatch.setattr(tr, "clip_grad_norm", poisoned)
    r = train("adding", "gru", 6, steps=10, batch=4, hidden=4, seed=0, eval_every=5, test_size=8)
    assert r.diverged and r.updates == 3 and not r.passed
    assert np.all(np.isfinite([p for p in r.model.parameters()["weight_hh_l0"].ravel()]))


def test_nofg_and_irnn_initialisations():
    from gpulstm.lab.train import IRNN_INPUT_STD, NOFG_INPUT_BIAS
    H = 8
    m = make_cell("lstm_nofg", 2, H, seed=0)
    b = m.parameters()["bias_ih_l0"][:H] + m.parameters()["bias_hh_l0"][:H]
    np.testing.assert_allclose(b, np.repeat(NOFG_INPUT_BIAS, H // 4))
    r = make_cell("irnn", 3, 64, seed=0).parameters()
    np.testing.assert_array_equal(r["weight_hh_l0"], np.eye(64, dtype=np.float32))
    assert abs(float(r["weight_ih_l0"].std()) - IRNN_INPUT_STD) < 0.2 * IRNN_INPUT_STD


def test_recall_task_reads_the_last_steps():
    r = train("recall", "lstm_nofg", 8, steps=400, batch=16, hidden=8, lr=3e-2, seed=1,
              eval_every=50, eval_size=128, test_size=128, stop_at_criterion=True)
    assert r.task == "recall" and r.baseline == pytest.approx(1 / 8)
    assert r.updates_to_criterion is not None and r.test_metric > 0.9


@pytest.mark.parametrize("name", CELLS + ("lstm",))
def test_make_cell_variants(name):
    m = make_cell(name, 3, 4, seed=0, t_max=40)
    sd = m.state_dict()
    if name.startswith("lstm"):
        assert isinstance(m, gl.LSTM)
        fb = sd["bias_ih_l0"][4:8] + sd["bias_hh_l0"][4:8]
        if name == "lstm_fb0":
            np.testing.assert_array_equal(fb, 0)
        elif name in ("lstm", "lstm_fb1", "lstm_peep"):
            np.testing.assert_array_equal(fb, 1)
        elif name == "lstm_fb3":
            np.testing.assert_allclose(fb, 3)
        elif name == "lstm_chrono":  # b_f ~ log U[1, 39], b_i = -b_f
            assert np.all((fb >= 0) & (fb <= np.log(39))) and np.ptp(fb) > 0
            np.testing.assert_allclose(sd["bias_ih_l0"][:4] + sd["bias_hh_l0"][:4], -fb)
            other = make_cell(name, 3, 4, seed=1, t_max=40).state_dict()["bias_ih_l0"][4:8]
            assert not np.array_equal(other, sd["bias_ih_l0"][4:8])  # drawn per seed
        assert m.forget_gate == (name != "lstm_nofg")
        assert m.peephole == (name == "lstm_peep")
    elif name.startswith("gru"):
        assert isinstance(m, gl.GRU)
        zb = sd["bias_ih_l0"][4:8] + sd["bias_hh_l0"][4:8]
        if name == "gru_ub3":
            np.testing.assert_allclose(zb, 3)
        else:
            assert np.abs(zb).max() < 1  # PyTorch's U(-1/2, 1/2) per bias
    elif name == "cifg":
        assert isinstance(m, gl.CIFG)
        np.testing.assert_array_equal(sd["bias_ih_l0"][:4] + sd["bias_hh_l0"][:4], 1)
    elif name == "indrnn":
        assert isinstance(m, gl.IndRNN) and m.nonlinearity == "relu"
        u = sd["weight_hh_l0"]
        assert u.shape == (4,) and np.all((u >= 0) & (u < 1)) and np.ptp(u) > 0
        assert not np.array_equal(u, make_cell(name, 3, 4, seed=1).state_dict()["weight_hh_l0"])
    else:
        assert isinstance(m, gl.RNN)
        if name == "irnn":
            assert m.nonlinearity == "relu"
            np.testing.assert_array_equal(sd["weight_hh_l0"], np.eye(4))
            np.testing.assert_array_equal(sd["bias_hh_l0"], 0)
    with pytest.raises(ValueError):
        make_cell("lstm2", 3, 4)
    with pytest.raises(ValueError, match="needs t_max"):
        make_cell("lstm_chrono", 3, 4)


@pytest.mark.parametrize("task", ["adding", "copy", "temporal_order"])
def test_training_reduces_the_loss(task):
    r = train(task, "lstm_fb1", 10, steps=60, batch=16, hidden=16, lr=1e-2, seed=0,
              eval_every=30, test_size=64)
    assert len(r.curve_loss) == 60 and np.all(np.isfinite(r.curve_loss))
    assert r.curve_loss[-10:].mean() < r.curve_loss[:5].mean()
    assert [e[0] for e in r.evals] == [30, 60]
    assert r.budget_sequences == 960 and r.curve_sequences[-1] == 960
    assert np.all(r.curve_grad_norm > 0)


def test_training_is_deterministic_under_a_seed():
    a = train("adding", "gru", 8, steps=10, batch=8, hidden=8, seed=4, test_size=32)
    b = train("adding", "gru", 8, steps=10, batch=8, hidden=8, seed=4, test_size=32)
    np.testing.assert_array_equal(a.curve_loss, b.curve_loss)
    assert a.test_metric == b.test_metric


def _emulated_or_skip():
    try:
        return get_backend("emulated")
    except (gl.BackendUnavailable, ImportError) as e:
        pytest.skip(f"emulated backend not available: {e}")


@pytest.mark.parametrize("cell", ["lstm_fb1", "gru", "rnn_tanh"])
def test_same_training_on_numpy_and_emulated_agrees(cell):
    _emulated_or_skip()
    kw = dict(steps=15, batch=8, hidden=8, lr=1e-2, seed=2, test_size=64, eval_every=5,
              dtype="float64")
    a = train("adding", cell, 12, backend="numpy", **kw)
    b = train("adding", cell, 12, backend="emulated", **kw)
    assert b.backend == "emulated"
    np.testing.assert_allclose(a.curve_loss, b.curve_loss, rtol=1e-9)
    assert a.test_metric == pytest.approx(b.test_metric, rel=1e-9)
    for k, p in a.model.parameters().items():
        np.testing.assert_allclose(p, b.model.parameters()[k], rtol=1e-8, atol=1e-10)


def test_bad_arguments():
    with pytest.raises(ValueError):
        train("adding", "lstm", 10, steps=1, optimizer="sgd")
    with pytest.raises(ValueError):
        train("adding", "lstm", 10, steps=1, clip=0)
    with pytest.raises(ValueError):
        train("adding", "nope", 10, steps=1)


@pytest.mark.slow
def test_torch_and_gpulstm_with_forget_bias_3_reach_recall_at_T50():
    """Training-level cross-check: torch.nn.LSTM and gpulstm's lstm_fb3 from the same initial
    weights (gpulstm's, forget bias 3 through gpulstm.init), trained on the same sequences
    (train()'s seeded streams) with Adam, lr 1e-3, clip 1, both reach the recall criterion at
    T = 50 within 1500 updates and pass on 1000 held-out test sequences."""
    torch = pytest.importorskip("torch")
    from gpulstm.lab.tasks import make_task

    T, B, Hd, lr, seed, budget = 50, 32, 32, 1e-3, 0, 1500
    task = make_task("recall", T)
    ours = train(task, "lstm_fb3", T, budget, batch=B, hidden=Hd, lr=lr, seed=seed,
                 stop_at_criterion=True)
    assert ours.updates_to_criterion is not None and ours.passed

    torch.manual_seed(seed)
    g = make_cell("lstm_fb3", task.input_size, Hd, seed=seed, t_max=T)
    rnn = torch.nn.LSTM(task.input_size, Hd)
    rnn.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32))
                         for k, v in g.state_dict().items()})
    fb = (rnn.bias_ih_l0 + rnn.bias_hh_l0)[Hd:2 * Hd].detach()
    assert torch.allclose(fb, torch.full((Hd,), 3.0))
    ss_readout, ss_train, ss_eval, ss_test = np.random.SeedSequence([seed, 0x6c73746d]).spawn(4)
    ro = Readout(Hd, task.output_size, g.ex, g.dtype, seed=ss_readout)
    lin = torch.nn.Linear(Hd, task.output_size)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.asarray(ro.params["weight"], np.float32)))
        lin.bias.zero_()
    params = list(rnn.parameters()) + list(lin.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    rng_train, rng_eval, rng_test = (np.random.default_rng(s) for s in (ss_train, ss_eval, ss_test))
    K = task.copy_length

    def logits(x):
        y, _ = rnn(torch.from_numpy(x))
        return lin(y[-K:].reshape(-1, Hd))

    def accuracy_on(rng, n):
        with torch.no_grad():
            x, t = task.sample(rng, n)
            return float((logits(x).argmax(1).numpy() == t.reshape(-1)).mean())

    reached = None
    for step in range(1, budget + 1):
        x, t = task.sample(rng_train, B)
        loss = torch.nn.functional.cross_entropy(logits(x), torch.from_numpy(t.reshape(-1)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 50 == 0 and task.passed(accuracy_on(rng_eval, 256)):
            reached = step
            break
    assert reached is not None, "torch.nn.LSTM with forget bias 3 did not reach the criterion"
    assert task.passed(accuracy_on(rng_test, 1000))
    print(f"recall T=50 fb3: gpulstm {ours.updates_to_criterion}, torch {reached} updates")

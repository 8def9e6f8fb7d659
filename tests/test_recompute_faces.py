"""recompute= on both faces (checkpointed BPTT, :func:`gpulstm.engine.forward`): the same
outputs and gradients bit for bit as without it, far fewer saved bytes, validated values, and
the torch face's saved tensors (the reserve's arrays) carry it through autograd."""
import numpy as np
import pytest

import gpulstm

torch = pytest.importorskip("torch")
import gpulstm.torch as gt  # noqa: E402

CASES = [("LSTM", {"num_layers": 2, "bidirectional": True}),
         ("GRU", {"num_layers": 2, "dropout": 0.3}),
         ("CIFG", {}),
         ("RNN", {"nonlinearity": "relu", "bidirectional": True})]


def _run_numpy(name, kw, recompute, x, dy, lens, seed, backend):
    m = getattr(gpulstm, name)(4, 6, backend=backend, dtype="float64", seed=seed,
                               recompute=recompute, **kw)
    y, _ = m(x, lengths=lens)
    token, arrays = m._reserve.pack(np)
    saved = sum(a.nbytes for a in arrays)
    dx = m.backward(dy)
    return [y, dx, *m.grads.values()], saved


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_numpy_face_recompute_is_bitwise_and_saves_less(name, kw, backend):
    rng = np.random.default_rng()
    T, B = 1400, 4  # 5600 rows: windows of 512 steps (2048 rows), so 3 segments
    x = rng.standard_normal((T, B, 4))
    D = 2 if kw.get("bidirectional") else 1
    dy = rng.standard_normal((T, B, 6 * D))
    lens = np.array([T, 900, 37, 1])
    seed = int(rng.integers(1 << 30))
    want, full = _run_numpy(name, kw, False, x, dy, lens, seed, backend)
    for rc in (True, 7):
        got, kept = _run_numpy(name, kw, rc, x, dy, lens, seed, backend)
        for a, b in zip(got, want):
            assert np.array_equal(a, b)
        assert kept < 0.5 * full, (rc, kept, full)


@pytest.mark.parametrize("bad,err", [(0, ValueError), (-3, ValueError), (2.5, TypeError),
                                     ("sqrt", TypeError)])
def test_bad_recompute_values_are_refused_on_both_faces(bad, err):
    with pytest.raises(err, match="recompute must be"):
        gpulstm.LSTM(3, 4, backend="numpy", recompute=bad)
    with pytest.raises(err, match="recompute must be"):
        gt.LSTM(3, 4, recompute=bad)
    m = gpulstm.GRU(3, 4, backend="numpy")
    with pytest.raises(err, match="recompute must be"):
        m.recompute = bad
    assert m.recompute is False


@pytest.mark.parametrize("name,kw", CASES, ids=[c[0] for c in CASES])
def test_torch_face_recompute_through_autograd_is_bitwise(name, kw):
    """The reserve's arrays (segment start states included) go through save_for_backward and
    come back for the backward's re-run: every gradient equals recompute=False's."""
    from gpulstm import engine
    from gpulstm.backends import get_backend
    rows = engine.window_rows(get_backend("cpu"))
    assert engine.segment_steps(True, 1100, 4, rows) < 1100  # several segments to re-run
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1100, 4, 4, dtype=torch.float64, generator=g)  # 3 segments (2048-row windows)
    outs = []
    for rc in (False, True, 5):
        torch.manual_seed(1)
        m = getattr(gt, name)(4, 6, recompute=rc, **kw).double()
        xi = x.clone().requires_grad_()
        torch.manual_seed(2)  # the dropout masks
        y = m(xi)[0]
        (y * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)).sum().backward()
        outs.append([y.detach(), xi.grad] + [p.grad for p in m.parameters()])
    for other in outs[1:]:
        for a, b in zip(other, outs[0]):
            assert torch.equal(a, b)
    assert "recompute=5" in repr(m)

"""The 1997 tasks as published: the adding problem of Experiment 4 (adding_1997) and the
noise-free long-time-lag task 2a (long_lag_2a): generators against their definitions, the
metric, the variable-length read-out, and a run through the sweep."""
import numpy as np
import pytest

from gpulstm.lab.tasks import adding_1997, long_lag_2a, make_task


def _markers(x, lengths):
    """(positions of the two +1 markers per sequence [B, 2] sorted, marker channel)."""
    m = x[:, :, 1]
    pos = np.sort(np.nonzero(m.T == 1.0)[1].reshape(x.shape[1], 2), axis=1)
    return pos, m


def test_adding_1997_lengths_and_padding(rng):
    T, B = 100, 5000
    x, target, lengths = adding_1997(rng, T, B)
    assert x.shape == (110, B, 2) and x.dtype == np.float32
    assert target.shape == (B, 1) and lengths.shape == (B,) and lengths.dtype == np.int64
    # lengths: integers uniform in [T, T + T/10], both ends reached
    assert lengths.min() == T and lengths.max() == T + T // 10
    assert len(np.unique(lengths)) == T // 10 + 1
    assert abs(lengths.mean() - (T + T / 20)) < 0.3
    # beyond each sequence's end: zero in both channels
    pad = np.arange(x.shape[0])[:, None] >= lengths[None, :]
    assert pad.any() and np.all(x[pad] == 0.0)


def test_adding_1997_values_and_markers_match_the_definition(rng):
    T, B = 100, 5000
    x, target, lengths = adding_1997(rng, T, B)
    cols = np.arange(B)
    inside = np.arange(x.shape[0])[:, None] < lengths[None, :]
    v = x[:, :, 0]
    assert np.all(np.abs(v[inside]) <= 1.0) and v[inside].min() < -0.99 and v[inside].max() > 0.99
    pos, m = _markers(x, lengths)
    assert np.all((m == 1.0).sum(axis=0) == 2)  # exactly two marked pairs
    # one marked among the first ten; both among the first T/2 (the second: one of the first
    # T/2 - 1 still unmarked pairs)
    assert np.all(pos[:, 0] < 10) and np.all(pos[:, 1] < T // 2)
    assert pos[:, 1].max() == T // 2 - 1 and len(np.unique(pos[:, 1])) > 30
    # the first and the last pair are marked -1 (unless marked 1), nothing else is
    first_marked = m[0] == 1.0
    assert np.all(m[0, ~first_marked] == -1.0) and first_marked.any()
    assert np.all(m[lengths - 1, cols] == -1.0)
    other = (m == -1.0).copy()
    other[0] = False
    other[lengths - 1, cols] = False
    assert not other.any()
    assert np.all(np.isin(m, (-1.0, 0.0, 1.0)))
    # the first pair marked: its value is 0
    assert np.all(v[0, first_marked] == 0.0) and np.all(v[0, ~first_marked] != 0.0)
    # target 0.5 + (X1 + X2) / 4, recomputed from the inputs
    X = v[pos[:, 0], cols] + v[pos[:, 1], cols]
    np.testing.assert_allclose(target[:, 0], 0.5 + X / 4.0, rtol=0, atol=1e-6)
    assert target.min() >= 0.0 and target.max() <= 1.0


def test_adding_1997_first_marker_uniform_over_the_first_ten():
    x, _, lengths = adding_1997(np.random.default_rng(3), 40, 20000)
    m = x[:, :, 1] == 1.0
    # positions 0..9 hold a marker in ~ 1/10 + (second marker there) of the sequences; the
    # sum over the first ten is exactly one for the first marker plus the second's share
    counts = m[:10].sum(axis=1) / x.shape[1]
    second_share = 1.0 / (40 // 2 - 1)  # the second lands on each other early pair ~ 1/19
    np.testing.assert_allclose(counts, 0.1 + second_share * 0.9, atol=0.015)


def test_adding_1997_baseline_and_metric():
    task = make_task("adding_1997", 100)
    assert task.length == 110 and task.variable_length and task.tolerance == 0.04
    _, target, _ = adding_1997(np.random.default_rng(0), 40, 200_000, np.float64)
    right = np.mean(np.abs(target - 0.5) <= 0.04)  # always predicting 0.5
    assert abs(right - task.baseline) < 0.004 and task.baseline == pytest.approx(0.1536)
    from gpulstm.lab.train import task_metric
    t = np.random.default_rng(1).uniform(0, 1, (50, 1))
    assert task_metric(np, task, t + 0.039, t, None) == 1.0
    assert task_metric(np, task, t + 0.041, t, None) == 0.0
    z = t.copy()
    z[:5] += 0.05
    assert task_metric(np, task, z, t, None) == pytest.approx(0.9)
    assert task.passed(0.99) and not task.passed(0.98)


def test_long_lag_2a_matches_the_definition(rng):
    p, B = 50, 4000
    x, target = long_lag_2a(rng, p, B)
    assert x.shape == (p, B, p + 1) and target.shape == (p, B) and target.dtype == np.int64
    assert np.all(x.sum(axis=2) == 1)  # one-hot over p + 1 symbols
    codes = x.argmax(axis=2)
    X, Y = p - 1, p  # codes 0..p-2 are a_1..a_{p-1}
    assert set(np.unique(codes[0])) == {X, Y}
    np.testing.assert_array_equal(codes[1:], np.broadcast_to(np.arange(p - 1)[:, None], (p - 1, B)))
    # next-symbol targets: the sequence shifted by one, its last symbol the first one again
    np.testing.assert_array_equal(target[:-1], codes[1:])
    np.testing.assert_array_equal(target[-1], codes[0])
    # exactly the two sequences (x, a_1..a_{p-1}, x) and (y, a_1..a_{p-1}, y), each ~ half
    full = np.concatenate([codes, target[-1:]], axis=0).T
    seqs = {tuple(r) for r in full}
    assert seqs == {(X, *range(p - 1), X), (Y, *range(p - 1), Y)}
    assert abs(np.mean(codes[0] == X) - 0.5) < 0.03


def test_long_lag_2a_task_scores_the_last_prediction_only():
    from gpulstm.lab.train import task_metric
    p, B = 10, 6
    task = make_task("long_lag_2a", p)
    assert (task.input_size, task.output_size, task.length, task.baseline) == (p + 1, p + 1, p, 0.5)
    _, target = long_lag_2a(np.random.default_rng(0), p, B)
    z = np.zeros((p * B, p + 1))
    z[np.arange(p * B), target.reshape(-1)] = 1.0  # every prediction right
    assert task_metric(np, task, z, target, None) == 1.0
    wrong_middle = z.copy()
    wrong_middle[:B] = np.roll(wrong_middle[:B], 1, axis=1)  # step 0 wrong: not scored
    assert task_metric(np, task, wrong_middle, target, None) == 1.0
    wrong_last = z.copy()
    wrong_last[-B:][:3] = np.roll(wrong_last[-B:][:3], 1, axis=1)  # 3 of 6 last steps wrong
    assert task_metric(np, task, wrong_last, target, None) == 0.5
    assert task.passed(1.0) and not task.passed(0.999)


def test_bad_arguments_1997():
    with pytest.raises(ValueError, match="T"):
        adding_1997(np.random.default_rng(0), 19, 2)
    with pytest.raises(ValueError, match="adding_1997 needs T >= 20"):
        make_task("adding_1997", 10)
    with pytest.raises(ValueError, match="p"):
        long_lag_2a(np.random.default_rng(0), 1, 2)
    with pytest.raises(TypeError):
        long_lag_2a(np.random.RandomState(0), 10, 2)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_variable_length_readout_at_each_sequences_last_step(backend):
    """The read-out takes each sequence's own last step (= h_n of the layer run with the
    lengths), and the gradients of that loss match central differences (float64)."""
    from conftest import backend_or_skip
    from gpulstm.lab.train import Readout, _forward_loss, _to_backend, make_cell
    backend_or_skip(backend)
    task = make_task("adding_1997", 20)
    model = make_cell("lstm_fb1", 2, 5, backend=backend, dtype="float64", seed=3)
    readout = Readout(5, 1, model.ex, model.dtype, seed=4)
    x, target, lengths = task.sample(np.random.default_rng(5), 6, np.float64)
    assert len(set(lengths)) > 1
    x, target, lengths = _to_backend(model.ex, model, task, x, target, lengths)
    loss, _ = _forward_loss(model, readout, task, x, target, backward=True, lengths=lengths)
    _, (h_n, _) = model(x, lengths=lengths)
    np.testing.assert_allclose(model.ex.to_numpy(readout._h), model.ex.to_numpy(h_n[0]),
                               rtol=0, atol=1e-12)
    _, (h_last, _) = model(x)  # without lengths: the padded last step, a different state
    assert not np.allclose(model.ex.to_numpy(h_last[0]), model.ex.to_numpy(h_n[0]))
    model.training = True
    _forward_loss(model, readout, task, x, target, backward=True, lengths=lengths)
    grads = {k: model.ex.to_numpy(g).copy() for k, g in model.grads.items()}
    params = model.parameters()
    for name in ("weight_hh_l0", "weight_ih_l0"):
        w = params[name]
        for idx in [(0, 0), (7, 1), (13, 1)]:
            old = float(w[idx])
            w[idx] = old + 1e-6
            lp = float(_forward_loss(model, readout, task, x, target, backward=False,
                                     lengths=lengths)[0])
            w[idx] = old - 1e-6
            lm = float(_forward_loss(model, readout, task, x, target, backward=False,
                                     lengths=lengths)[0])
            w[idx] = old
            assert grads[name][idx] == pytest.approx((lp - lm) / 2e-6, rel=1e-5, abs=1e-10)


@pytest.mark.parametrize("task, T", [("adding_1997", 20), ("long_lag_2a", 10)])
def test_1997_tasks_run_through_the_sweep(task, T):
    from gpulstm.lab.sweep import PROFILES, run_sweep, summarize
    p = dict(PROFILES["quick"], cells=("lstm_fb1",), seeds=(0,), lrs={"lstm_fb1": (1e-2,)},
             tasks={task: (T,)}, budget_base=20, budget_per_T=0, eval_every=10, eval_size=16,
             test_size=16, hidden=6, batch=8)
    (rec,) = run_sweep(p, workers=0, progress=False)
    assert rec["task"] == task and 0.0 <= rec["test_metric"] <= 1.0 and rec["updates"] >= 10
    assert rec["baseline"] == make_task(task, T).baseline
    best = summarize([rec])[1]
    assert list(best["task"]) == [task]

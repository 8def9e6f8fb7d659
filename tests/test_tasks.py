"""Task generators: shapes, markers, targets, baselines, determinism, fresh data."""
import math

import numpy as np
import pytest

from gpulstm.lab.tasks import TASKS, adding_problem, copy_memory, make_task, temporal_order


def test_adding_problem_markers_and_target(rng):
    T, B = 21, 64
    x, y = adding_problem(rng, T, B)
    assert x.shape == (T, B, 2) and y.shape == (B, 1) and x.dtype == np.float32
    m = x[:, :, 1]
    assert np.all(m.sum(axis=0) == 2)
    assert np.all(m[:T // 2].sum(axis=0) == 1) and np.all(m[T // 2:].sum(axis=0) == 1)
    assert np.all((x[:, :, 0] >= 0) & (x[:, :, 0] < 1))
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * m).sum(axis=0), rtol=1e-6)


def test_adding_baseline_mse_of_predicting_one():
    _, y = adding_problem(np.random.default_rng(0), 10, 200_000, np.float64)
    mse = np.mean((y - 1.0) ** 2)
    assert abs(mse - 0.167) < 0.003
    assert make_task("adding", 10).baseline == pytest.approx(1 / 6)


def test_copy_memory_layout(rng):
    T, B = 15, 32
    x, y = copy_memory(rng, T, B)
    L = T + 20
    assert x.shape == (L, B, 10) and y.shape == (L, B) and y.dtype == np.int64
    codes = x.argmax(axis=2)
    assert np.all(x.sum(axis=2) == 1)
    assert np.all((codes[:10] >= 1) & (codes[:10] <= 8))
    assert np.all(codes[10:T + 9] == 0) and np.all(codes[T + 9] == 9) and np.all(codes[T + 10:] == 0)
    assert np.all(y[:T + 10] == 0)
    np.testing.assert_array_equal(y[T + 10:], codes[:10])


def test_copy_memory_baseline_cross_entropy(rng):
    """Blank for the first T+10 steps, uniform over the 8 symbols after: 10 ln 8 / (T + 20)."""
    T = 30
    x, y = copy_memory(rng, T, 500)
    logp = np.full(y.shape + (9,), -np.inf)
    logp[:T + 10, :, 0] = 0.0
    logp[T + 10:, :, 1:] = -math.log(8)
    ce = -np.take_along_axis(logp, y[..., None], axis=2).mean()
    assert ce == pytest.approx(10 * math.log(8) / (T + 20))
    assert make_task("copy", T).baseline == pytest.approx(ce)


def test_temporal_order_layout_and_classes(rng):
    T, B = 50, 4000
    x, y = temporal_order(rng, T, B)
    assert x.shape == (T, B, 6) and y.shape == (B,)
    codes = x.argmax(axis=2)
    rel = codes >= 4
    assert np.all(rel.sum(axis=0) == 2)
    t1, t2 = (np.sort(np.nonzero(rel.T)[1].reshape(B, 2), axis=1)).T
    assert np.all((t1 >= 5) & (t1 < 10)) and np.all((t2 >= 25) & (t2 < 30))
    cols = np.arange(B)
    np.testing.assert_array_equal(y, 2 * (codes[t1, cols] - 4) + (codes[t2, cols] - 4))
    # the four classes are equally likely: chance accuracy 25 %
    np.testing.assert_allclose(np.bincount(y, minlength=4) / B, 0.25, atol=0.03)
    assert make_task("temporal_order", T).baseline == 0.25


@pytest.mark.parametrize("name", TASKS)
def test_determinism_and_fresh_batches(name):
    task = make_task(name, 20)
    a1 = task.sample(np.random.default_rng(7), 8)
    a2 = task.sample(np.random.default_rng(7), 8)
    for u, v in zip(a1, a2):
        np.testing.assert_array_equal(u, v)
    rng = np.random.default_rng(7)
    b1, b2 = task.sample(rng, 8), task.sample(rng, 8)
    assert not np.array_equal(b1[0], b2[0])
    assert b1[0].shape[0] == task.length


def test_pass_criteria():
    assert make_task("adding", 100).passed(0.009) and not make_task("adding", 100).passed(0.02)
    copy = make_task("copy", 100)
    assert copy.passed(0.09 * copy.baseline) and not copy.passed(0.2 * copy.baseline)
    order = make_task("temporal_order", 100)
    assert order.passed(0.99) and not order.passed(0.98)


def test_bad_arguments():
    with pytest.raises(TypeError):
        adding_problem(np.random.RandomState(0), 10, 2)
    with pytest.raises(ValueError):
        adding_problem(np.random.default_rng(0), 1, 2)
    with pytest.raises(ValueError):
        make_task("parity", 10)
    with pytest.raises(ValueError):
        make_task("temporal_order", 5)


def test_recall_variable_matches_its_definition():
    from gpulstm.lab.tasks import COPY_DELIMITER, recall_variable
    rng = np.random.default_rng(7)
    T, B, K = 30, 4000, 2
    x, target = recall_variable(rng, T, B, length=K)
    assert x.shape == (T + 2 * K, B, 10) and target.shape == (K, B)
    assert np.all(x.sum(-1) == 1)  # one-hot everywhere
    codes = x.argmax(-1)
    assert np.all(codes[T + K - 1] == COPY_DELIMITER) and np.all(codes[T + K:] == 0)
    body = codes[:T + K - 1]
    nonblank = body != 0
    assert np.all(nonblank.sum(0) == K)  # exactly the K symbols, consecutive, in order
    start = nonblank.argmax(0)
    for k in range(K):
        assert np.array_equal(body[start + k, np.arange(B)], target[k])
    assert target.min() >= 1 and target.max() <= 8
    # the start is uniform over [0, T): every position occurs, none outside
    assert start.min() == 0 and start.max() == T - 1 and len(np.unique(start)) == T
    assert abs(start.mean() - (T - 1) / 2) < 0.5
    task = make_task("recall_variable", T)
    assert task.copy_length == 1 and task.length == T + 2 and task.passed(0.99)
    assert not task.passed(0.98)

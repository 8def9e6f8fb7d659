"""Recompute (checkpointed) BPTT: engine.forward(..., recompute=True | k) keeps only the states
at the starts of segments and engine.backward runs each segment's forward again before its
BPTT. The outputs and every gradient must equal recompute=False's to the bit, on every
execution and option; the memory kept must be far less.

Small shapes reach many windows and segments through a small ``window_rows`` (rows of one
window, gpulstm.engine.window_steps) set on a copy of the execution: the window is the unit
of the whole-sequence GEMMs and bias sums (both paths), and segments are multiples of it.
"""
import copy
import tracemalloc

import numpy as np
import pytest

import gpulstm as gl
from gpulstm import engine
from gpulstm.backends import get_backend

from conftest import backend_or_skip

T, B, I, H = 23, 3, 4, 5

EXECUTIONS = [("numpy", "auto"), ("cpu", "auto"), ("emulated", "stepwise"),
              ("emulated", "fused"), ("emulated", "persistent"),
              ("cupy", "stepwise"), ("cupy", "fused"), ("cupy", "persistent")]  # GPU: skips here
CONFIGS = {
    "lstm-dropout": ("LSTM", {"dropout": 0.25}),
    "lstm-proj": ("LSTM", {"proj_size": 3}),
    "lstm-peephole": ("LSTM", {"peephole": True}),
    "lstm-noforget": ("LSTM", {"forget_gate": False}),
    "gru-dropout": ("GRU", {"dropout": 0.25}),
    "rnn-relu": ("RNN", {"nonlinearity": "relu"}),
    "rnn-tanh": ("RNN", {"nonlinearity": "tanh", "bias": False}),
    "cifg": ("CIFG", {}),
    "indrnn": ("IndRNN", {}),
}


def _execution(name, algo, rows):
    ex = backend_or_skip(name)
    if algo != "auto":
        ex = get_backend(name, algo)
    ex = copy.copy(ex)  # the shared execution keeps its windows
    ex.window_rows = rows
    return ex


def _problem(rng, cls, kw, dtype, layers=2, D=2):
    kw = dict(kw)
    dropout = kw.pop("dropout", 0.0)
    m = getattr(gl, cls)(I, H, num_layers=layers, bidirectional=D == 2, backend="numpy",
                         dtype=dtype, seed=int(rng.integers(2**31)), **kw)
    Hs = kw.get("proj_size") or H
    p = dict(cell=m._make_cell(), params=m._weights(), dropout=dropout, Hs=Hs,
             has_c=cls in ("LSTM", "CIFG"))
    p["x"] = rng.standard_normal((T, B, I)).astype(dtype)
    p["h0"] = rng.standard_normal((layers * D, B, Hs)).astype(dtype)
    p["c0"] = rng.standard_normal((layers * D, B, H)).astype(dtype) if p["has_c"] else None
    p["L"] = np.array([T, 7, 13], np.int32)  # full, short, middle: both directions clip
    p["dy"] = rng.standard_normal((T, B, D * Hs)).astype(dtype)
    p["dh"] = rng.standard_normal(p["h0"].shape).astype(dtype)
    p["dc"] = rng.standard_normal((layers * D, B, H)).astype(dtype) if p["has_c"] else None
    return p


def _run(ex, p, recompute, save=True):
    rng = engine.DropoutStream(1234, 5)  # the same masks on every run
    if ex.xp is not np:  # cupy: the problem on the device, the results back on the host
        dev = {k: (None if v is None else ex.asarray(v, v.dtype))
               for k, v in p.items() if k in ("x", "h0", "c0", "L", "dy", "dh", "dc")}
        dev["params"] = [[{k: None if v is None else ex.asarray(v, v.dtype) for k, v in w.items()}
                          for w in dirs] for dirs in p["params"]]
        p = dict(p, **dev)
    host = (lambda a: None if a is None else ex.to_numpy(a))
    y, hn, cn, ctx = engine.forward(ex, p["cell"], p["params"], p["x"], p["h0"], p["c0"],
                                    p["L"], p["dropout"], rng, save=save, recompute=recompute)
    if not save:
        return host(y), host(hn), host(cn), ctx
    dx, dh0, dc0, grads = engine.backward(ex, ctx, p["dy"], p["dh"], p["dc"])
    grads = [[{k: host(v) for k, v in gd.items()} for gd in dirs] for dirs in grads]
    return host(y), host(hn), host(cn), host(dx), host(dh0), host(dc0), grads, ctx


def _assert_same(got, want, what):
    names = ("y", "h_n", "c_n", "dx", "dh0", "dc0")
    for name, a, b in zip(names, got[:6], want[:6]):
        if b is None:
            assert a is None, (what, name)
        else:
            assert np.array_equal(a, b), (what, name, float(np.abs(a - b).max()))
    for layer, dirs in enumerate(want[6]):
        for d, gw in enumerate(dirs):
            gg = got[6][layer][d]
            assert gg.keys() == gw.keys()
            for k, v in gw.items():
                if v is None:
                    assert gg[k] is None, (what, layer, d, k)
                else:
                    assert gg[k].dtype == v.dtype and np.array_equal(gg[k], v), \
                        (what, layer, d, k, float(np.abs(gg[k] - v).max()))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("name,algo", EXECUTIONS)
def test_recompute_is_bitwise_the_same(name, algo, config, dtype, rng):
    """Outputs, final states, dx, dh0, dc0 and every weight gradient equal recompute=False's
    to the bit: 2 layers, bidirectional, variable lengths, random dL/dh_n and dL/dc_n, windows
    of 2 steps (segments of k rounded up to a multiple of 2: 2, 4, 8 and ceil(sqrt(23)) = 5 ->
    6 steps)."""
    ex = _execution(name, algo, 2 * B)
    cls, kw = CONFIGS[config]
    p = _problem(rng, cls, kw, dtype)
    want = _run(ex, p, False)
    assert "segments" not in want[7].saved[0][0]
    for rc in (True, 1, 3, 7):
        got = _run(ex, p, rc)
        assert "segments" in got[7].saved[0][0]  # it did recompute
        _assert_same(got, want, rc)


@pytest.mark.parametrize("name,algo", [("numpy", "auto"), ("cpu", "auto")])
@pytest.mark.parametrize("rows", [1, B, 4 * B, 10**6])
def test_windows_of_any_size(name, algo, rows, rng):
    """One-step windows (rows = 1 or B), 4-step windows and one window for everything (then
    recompute keeps everything: one segment); one layer, one direction, recompute 1 and 5."""
    ex = _execution(name, algo, rows)
    p = _problem(rng, "LSTM", {}, "float64", layers=1, D=1)
    want = _run(ex, p, False)
    for rc in (1, 5):
        got = _run(ex, p, rc)
        assert ("segments" in got[7].saved[0][0]) == (rows < T * B)
        _assert_same(got, want, rc)


def test_a_test_that_can_fail(rng):
    """The kernel executions' backward adds the last step's dG W_hh by a GEMM where a longer
    loop's kernel adds it itself: calling it once per segment instead of once per window
    (claiming backward_segment_exact) changes the bits, which the comparison above sees."""
    ex = _execution("emulated", "fused", 2 * B)
    ex.backward_segment_exact = True
    p = _problem(rng, "LSTM", {}, "float64")
    want = _run(ex, p, False)
    with pytest.raises(AssertionError):
        _assert_same(_run(ex, p, 3), want, 3)


def test_inference_ignores_recompute(rng):
    ex = get_backend("numpy")
    p = _problem(rng, "GRU", {}, "float64")
    y, hn, _, ctx = _run(ex, p, True, save=False)
    assert ctx.saved is None
    y0, hn0, _, _ = _run(ex, p, False, save=False)
    assert np.array_equal(y, y0) and np.array_equal(hn, hn0)


@pytest.mark.parametrize("bad", [0, -3])
def test_segment_size_must_be_positive(bad):
    with pytest.raises(ValueError, match="recompute must be False, None, True or an int >= 1"):
        engine.check_recompute(bad)


@pytest.mark.parametrize("bad", [2.5, "sqrt", [3], np.float64(4.0)])
def test_segment_size_must_be_an_int(bad):
    with pytest.raises(TypeError, match="recompute must be False, None, True or an int >= 1"):
        engine.check_recompute(bad)


def test_engine_forward_validates_recompute(rng):
    p = _problem(rng, "RNN", {}, "float64", layers=1, D=1)
    with pytest.raises(TypeError, match="recompute"):
        _run(get_backend("numpy"), p, 1.5)
    with pytest.raises(ValueError, match="recompute"):
        _run(get_backend("numpy"), p, 0)


def test_segment_steps():
    assert engine.check_recompute(None) is None and engine.check_recompute(False) is None
    assert engine.check_recompute(True) is True and engine.check_recompute(np.int64(3)) == 3
    assert engine.window_steps(100, 4, rows=2048) == 100
    assert engine.window_steps(10000, 4, rows=2048) == 512
    assert engine.window_steps(100, 64, rows=2048) == 32
    assert engine.segment_steps(True, 100, 1, rows=1) == 10  # ceil(sqrt(100))
    assert engine.segment_steps(True, 101, 1, rows=1) == 11
    assert engine.segment_steps(3, 100, 1, rows=2) == 4  # rounded up to whole windows
    assert engine.segment_steps(True, 100, 2, rows=8) == 12
    assert engine.segment_steps(100, 100, 1, rows=1) is None  # one segment: nothing to save
    assert engine.segment_steps(False, 100, 1, rows=1) is None
    assert engine.segment_steps(True, 10000, 4) == 512  # the default window: 2048 rows


def test_record_state_grads_is_refused_with_recompute(rng):
    ex = _execution("numpy", "auto", B)
    p = _problem(rng, "LSTM", {}, "float64", layers=1, D=1)
    _, _, _, ctx = engine.forward(ex, p["cell"], p["params"], p["x"], p["h0"], p["c0"], p["L"],
                                  recompute=4)
    with pytest.raises(ValueError, match="record_state_grads.*recompute=False"):
        engine.backward(ex, ctx, p["dy"], record_state_grads=True)


def _peak(f):
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = f()
        return tracemalloc.get_traced_memory()[1] - base, out
    finally:
        tracemalloc.stop()


def test_peak_memory_is_far_less(rng):
    """numpy, LSTM, T = 2000, B = 4, H = 32, windows of 16 steps (64 rows): a training step
    with recompute=True (segments of ceil(sqrt(2000)) = 45 -> 48 steps) peaks at a third of
    one without (what remains is O(T) either way: x, y, dy, dx), the forward keeps a fifth
    (most of it the output y),
    and saved_bytes covers what each forward keeps."""
    T_, B_, I_, H_, rows = 2000, 4, 4, 32, 64
    ex = _execution("numpy", "auto", rows)
    m = gl.LSTM(I_, H_, backend="numpy", dtype="float32", seed=3)
    cell, params = m._make_cell(), m._weights()
    x = rng.standard_normal((T_, B_, I_)).astype(np.float32)
    h0 = np.zeros((1, B_, H_), np.float32)
    L = np.full(B_, T_, np.int32)
    dy = rng.standard_normal((T_, B_, H_)).astype(np.float32)
    peaks, kept = {}, {}
    for rc in (False, True):
        def step():
            y, _, _, ctx = engine.forward(ex, cell, params, x, h0, h0, L, recompute=rc)
            engine.backward(ex, ctx, dy)
        peaks[rc] = _peak(step)[0]

        def fwd():
            out = engine.forward(ex, cell, params, x, h0, h0, L, recompute=rc)
            return tracemalloc.get_traced_memory()[0]
        kept[rc] = _peak(fwd)[1]
    assert peaks[True] < 0.35 * peaks[False], peaks
    assert kept[True] < 0.2 * kept[False], kept
    need = {rc: engine.saved_bytes(cell, T_, B_, I_, H_, H_, 1, 1, 4, recompute=rc, rows=rows)
            for rc in (False, True)}
    for rc in (False, True):
        assert kept[rc] <= need[rc], (rc, kept[rc], need[rc])
    assert need[True] < 0.2 * need[False], need


@pytest.mark.slow
def test_long_sequence_trains_on_the_cpu_execution(rng):
    """T = 100k, B = 4, H = 64 (LSTM, float32, cpu execution): one training step with
    recompute=True, its gradients finite, its peak far below the history it does not keep
    (T * B * 7H floats, about 720 MB)."""
    ex = backend_or_skip("cpu")
    T_, B_, I_, H_ = 100_000, 4, 16, 64
    m = gl.LSTM(I_, H_, backend="numpy", dtype="float32", seed=4)
    cell, params = m._make_cell(), m._weights()
    x = rng.standard_normal((T_, B_, I_)).astype(np.float32)
    h0 = np.zeros((1, B_, H_), np.float32)
    L = np.full(B_, T_, np.int32)
    dy = (rng.standard_normal((T_, B_, H_)) * 1e-3).astype(np.float32)

    def step():
        y, _, _, ctx = engine.forward(ex, cell, params, x, h0, h0, L, recompute=True)
        return engine.backward(ex, ctx, dy)
    peak, (dx, dh0, dc0, grads) = _peak(step)
    assert peak < 0.4 * T_ * B_ * 7 * H_ * 4, peak
    for k, v in grads[0][0].items():
        if v is not None:
            assert np.isfinite(v).all(), k
    assert np.isfinite(dx).all() and np.isfinite(dh0).all()


def test_the_asv_benchmarks_run():
    """bench/recompute.py once at small T: the traced peak is smaller with recompute, the
    time ratio a positive number."""
    import importlib
    bench = importlib.import_module("bench.recompute")
    peaks = {}
    for rc in (False, True):
        b = bench.RecomputeMemory()
        try:
            b.setup(3000, rc)
        except NotImplementedError as e:
            pytest.skip(str(e))
        b.peakmem_training_step(3000, rc)
        b.time_training_step(3000, rc)
        peaks[rc] = b.track_traced_peak_mib(3000, rc)
    assert 0 < peaks[True] < 0.5 * peaks[False], peaks
    ratio = bench.measure_ratio((600,), repeat=1)[600]
    assert isinstance(ratio, float) and ratio > 0
    c = bench.RecomputeTimeRatio()
    c.setup({600: ratio}, 600)
    assert c.track_time_ratio({600: ratio}, 600) == ratio


@pytest.mark.parametrize("T_,B_,dtype", [(200, 8, "float32"), (120, 16, "float64")])
def test_cpu_loop_is_exact_across_thread_splits(T_, B_, dtype, rng):
    """The cpu execution claims forward/backward_segment_exact: its loop over a whole
    direction split over 2 threads (hidden units for B <= 8, row blocks above) and its loop
    over 4-step segments, too small to split (1 thread), give the same bits."""
    backend_or_skip("cpu")
    from gpulstm.backends import cpu
    ex = _execution("cpu", "auto", B_)
    old = cpu.set_num_threads(2)
    try:
        m = gl.LSTM(16, 64, backend="numpy", dtype=dtype, seed=1)
        cell, params = m._make_cell(), m._weights()
        x = rng.standard_normal((T_, B_, 16)).astype(dtype)
        h0 = rng.standard_normal((1, B_, 64)).astype(dtype)
        L = np.full(B_, T_, np.int32)
        L[1] = T_ // 3
        dy = rng.standard_normal((T_, B_, 64)).astype(dtype)
        outs, used = [], []
        for rc in (False, 4):
            y, hn, cn, ctx = engine.forward(ex, cell, params, x, h0, h0, L, recompute=rc)
            used.append(cpu._library().last_threads())
            outs.append((y, hn, cn) + engine.backward(ex, ctx, dy))
    finally:
        cpu.set_num_threads(old)
    assert used == [2, 1], used  # the two calls did split differently
    a, b = outs
    for u, v in zip(a[:6], b[:6]):
        assert np.array_equal(u, v)
    for k, v in a[6][0][0].items():
        if v is not None:
            assert np.array_equal(v, b[6][0][0][k]), k

"""CUDA graphs of the fused loop (gpulstm.backends.graphs, KernelLoop.with_graphs, module option
cuda_graphs) on the emulated execution: graphs on vs off bit for bit for every cell and option
with NaN-poisoned buffers, one capture per shape then replays with new data, arenas never
aliasing a live context (two forwards before one backward, stacked layers, both directions,
the output kept by the caller, gradients still held), the pool's bounds, the emulator's graphs
(nothing runs during a capture, a replay into freed memory raises), the launch trace, the
CuPy capture glue on a fake CuPy, and the option refused where it cannot apply."""
import copy
import gc
import pickle

import numpy as np
import pytest

import gpulstm as gl
from gpulstm import engine
from gpulstm.backends import get_backend
from gpulstm.backends.graphs import GraphPool

from conftest import numpy_gemm_ex
from kernel_cases import _poisoned


def _graph_module(cls, I, H, kw, dtype, algo="fused", poison=True, **gkw):
    """(plain fused module, the same module with graphs), same weights and dropout seed; the
    graph module's buffers (engine and arenas) start NaN when ``poison``."""
    plain = getattr(gl, cls)(I, H, **kw, backend="emulated", dtype=dtype, seed=5, algo=algo)
    m = getattr(gl, cls)(I, H, **kw, backend="emulated", dtype=dtype, seed=5, algo=algo,
                         cuda_graphs=True)
    ex = m.ex.with_graphs(True, **gkw) if gkw else m.ex
    object.__setattr__(m, "ex", _poisoned(ex) if poison else ex)  # past the fixed-attribute guard
    return plain, m


def _problem(rng, m, T, B, lengths, dtype):
    LD, H, D = m.num_layers * m.num_directions, m.hidden_size, m.num_directions
    r = lambda *s: (rng.standard_normal(s) * 0.8).astype(dtype)  # noqa: E731
    lens = None
    if lengths:
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T
    return dict(x=r(T, B, m.input_size), h0=r(LD, B, H), c0=r(LD, B, H), lengths=lens,
                gy=r(T, B, D * H), gh=r(LD, B, H), gc=r(LD, B, H))


def _run(m, p):
    """Forward + backward: every result as a NumPy copy."""
    if isinstance(m, gl.LSTM):
        y, (hn, cn) = m(p["x"], (p["h0"], p["c0"]), lengths=p["lengths"])
        dx = m.backward(p["gy"], p["gh"], p["gc"])
        out = dict(y=y, h_n=hn, c_n=cn, dx=dx, dh0=m.grad_hx[0], dc0=m.grad_hx[1])
    else:
        y, hn = m(p["x"], p["h0"], lengths=p["lengths"])
        dx = m.backward(p["gy"], p["gh"])
        out = dict(y=y, h_n=hn, dx=dx, dh0=m.grad_hx)
    out.update({"grad." + k: v for k, v in m.grads.items()})
    return {k: np.array(m.ex.to_numpy(v), copy=True) for k, v in out.items()}


def _assert_identical(got, want, where):
    assert set(got) == set(want)
    for k in want:
        assert np.isfinite(got[k]).all(), f"{where} {k}: non-finite (an element never written)"
        assert np.array_equal(got[k], want[k]), (
            f"{where} {k}: differs by {np.abs(got[k] - want[k]).max():.3g}")


# (id, class, kwargs, T, B, lengths?, H)
CASES = [
    ("lstm", "LSTM", {}, 5, 3, False, 37),
    ("lstm-peephole", "LSTM", {"peephole": True}, 4, 3, True, 37),
    ("lstm-noforget", "LSTM", {"forget_gate": False}, 4, 2, True, 33),
    ("lstm-2layer-bidir-dropout", "LSTM",
     {"num_layers": 2, "bidirectional": True, "dropout": 0.3}, 4, 3, True, 37),
    ("lstm-T1-B1", "LSTM", {"bidirectional": True}, 1, 1, False, 31),
    ("lstm-H70-B11", "LSTM", {}, 3, 11, True, 70),
    ("gru", "GRU", {}, 5, 3, True, 37),
    ("gru-2layer-bidir", "GRU", {"num_layers": 2, "bidirectional": True, "bias": False}, 4, 3, True, 33),
    ("rnn-tanh-bidir", "RNN", {"nonlinearity": "tanh", "bidirectional": True}, 5, 1, True, 37),
    ("rnn-relu-2layer-dropout", "RNN", {"nonlinearity": "relu", "num_layers": 2, "dropout": 0.5},
     5, 3, True, 65),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_graphs_bit_identical_to_the_fused_loop(emulated, rng, case, dtype):
    """Three forward+backward calls with fresh inputs: outputs, final states, dx, dh0/dc0 and
    every parameter gradient equal the plain fused loop's bit for bit; the first call captures,
    the next ones replay."""
    cid, cls, kw, T, B, lengths, H = case
    plain, m = _graph_module(cls, 4, H, kw, dtype)
    for i in range(3):
        p = _problem(rng, m, T, B, lengths, dtype)
        _assert_identical(_run(m, p), _run(plain, p), f"{cid} <{dtype}> call {i}")
    st = m.ex.graph_pool.stats()
    assert st["captures"]["forward"] >= 1 and st["captures"]["backward"] >= 1
    assert st["replays"]["forward"] == 3 * m.num_layers * m.num_directions
    assert st["replays"]["backward"] == 3 * m.num_layers * m.num_directions
    assert st["exhausted"] == 0


def test_capture_once_per_shape_then_replay(emulated, rng):
    """One capture per phase for a shape; later calls with new data replay it (no kernel is
    launched directly) and give the new correct results; a new T captures again."""
    plain, m = _graph_module("LSTM", 3, 37, {}, "float64")
    pool = m.ex.graph_pool
    direct = []
    orig = m.ex.pw.kernel

    def counting(name, dtype, cell=None):
        k = orig(name, dtype, cell)

        def launch(*a, **kw):
            direct.append(name)
            return k(*a, **kw)
        return launch
    m.ex.pw.kernel = counting
    try:
        for i in range(4):
            p = _problem(rng, m, 6, 2, True, "float64")
            want = _run(plain, p)  # (plain shares the kernels: launches before clear())
            direct.clear()
            _assert_identical(_run(m, p), want, f"call {i}")
            # the first call launches its 2 x T steps into the captures; later ones none
            assert len(direct) == (12 if i == 0 else 0), (i, direct)
            m._ctx = None  # the caller keeps nothing from this call
        assert pool.captures == {"forward": 1, "backward": 1}
        assert pool.replays == {"forward": 4, "backward": 4}
        p = _problem(rng, m, 9, 2, False, "float64")
        _assert_identical(_run(m, p), _run(plain, p), "T=9")
        assert pool.captures == {"forward": 2, "backward": 2}
    finally:
        del m.ex.pw.kernel


def _engine_run(ex, m, p, save=True):
    """engine.forward with the module's weights (a context of our own)."""
    xp = ex.xp
    lens = np.full(p["x"].shape[1], p["x"].shape[0], np.int32) if p["lengths"] is None \
        else np.asarray(p["lengths"], np.int32)
    c0 = xp.asarray(p["c0"]) if isinstance(m, gl.LSTM) else None
    return engine.forward(ex, m._make_cell(), m._weights(copy=True), xp.asarray(p["x"]),
                          xp.asarray(p["h0"]), c0, lens, save=save)


@pytest.mark.parametrize("cls, kw", [("LSTM", {"num_layers": 3}),
                                     ("GRU", {"bidirectional": True, "num_layers": 2})])
def test_two_forwards_before_one_backward(emulated, rng, cls, kw):
    """Contexts alive at once get separate arenas (so do the stacked layers, which share a
    shape): the second forward leaves the first's saved buffers alone, and backwards in any
    order give the plain loop's gradients."""
    plain, m = _graph_module(cls, 5, 37, kw, "float64")
    ps = [_problem(rng, m, 4, 3, True, "float64") for _ in range(2)]
    want = []
    for p in ps:
        y, hn, cn, ctx = _engine_run(plain.ex, m, p)
        want.append((y.copy(), hn, engine.backward(plain.ex, ctx, p["gy"], p["gh"])))
    runs = [_engine_run(m.ex, m, p) for p in ps]  # two forwards
    LD = m.num_layers * m.num_directions
    st = m.ex.graph_pool.stats()
    assert st["in_use"] == st["arenas"] == 2 * LD and st["captures"]["forward"] == 2 * LD
    for i in (1, 0):  # then the backwards, the later context first
        y, hn, _, ctx = runs[i]
        wy, whn, (wdx, wdh0, _, wgrads) = want[i]
        assert np.array_equal(y, wy) and np.array_equal(hn, whn)
        dx, dh0, _, grads = engine.backward(m.ex, ctx, ps[i]["gy"], ps[i]["gh"])
        assert np.array_equal(dx, wdx) and np.array_equal(dh0, wdh0)
        for layer in range(m.num_layers):
            for d in range(m.num_directions):
                for k, v in wgrads[layer][d].items():
                    if v is not None:
                        assert np.array_equal(grads[layer][d][k], v), (i, layer, d, k)
    del runs, ctx, y, hn
    gc.collect()
    assert m.ex.graph_pool.stats()["in_use"] == 0


def test_a_kept_output_keeps_its_arena(emulated, rng):
    """A unidirectional module returns the arena's Y as its output: while the caller holds it,
    later calls take another arena and the held output does not change."""
    plain, m = _graph_module("RNN", 3, 37, {}, "float32")
    p1 = _problem(rng, m, 5, 2, True, "float32")
    y1 = m(p1["x"], p1["h0"], lengths=p1["lengths"])[0]
    snapshot = y1.copy()
    for _ in range(3):
        p = _problem(rng, m, 5, 2, True, "float32")
        y = m(p["x"], p["h0"], lengths=p["lengths"])[0]
        assert np.array_equal(y, plain(p["x"], p["h0"], lengths=p["lengths"])[0])
    assert np.array_equal(y1, snapshot)
    st = m.ex.graph_pool.stats()
    assert st["arenas"] == 3 and st["captures"]["forward"] == 3  # y1, y (alternating)
    assert st["in_use"] == 2
    del y1, y
    m._ctx = None
    gc.collect()
    assert m.ex.graph_pool.stats()["in_use"] == 0


def test_per_shape_bound_runs_the_plain_loop(emulated, rng):
    """With per_shape=2, a third context alive at once runs the ordinary fused loop (counted
    as exhausted) with the same numbers."""
    plain, m = _graph_module("LSTM", 3, 37, {}, "float64", per_shape=2)
    ps = [_problem(rng, m, 4, 2, True, "float64") for _ in range(3)]
    runs = [_engine_run(m.ex, m, p) for p in ps]
    pool = m.ex.graph_pool
    assert pool.stats()["arenas"] == 2 and pool.exhausted == 1
    assert "graph_lease" not in runs[2][3].saved[0][0]
    for p, (y, hn, cn, ctx) in zip(ps, runs):
        wy, whn, wcn, wctx = _engine_run(plain.ex, m, p)
        assert np.array_equal(y, wy) and np.array_equal(cn, wcn)
        got = engine.backward(m.ex, ctx, p["gy"])
        want = engine.backward(plain.ex, wctx, p["gy"])
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_free_arenas_are_bounded_and_cleared(emulated, rng):
    """max_free bounds the free arenas over all shapes (least recently used dropped, with their
    graphs); clear() drops the free ones."""
    plain, m = _graph_module("GRU", 3, 9, {}, "float64", poison=False, max_free=2)
    pool = m.ex.graph_pool
    for T in (2, 3, 4, 5):
        p = _problem(rng, m, T, 2, False, "float64")
        _assert_identical(_run(m, p), _run(plain, p), f"T={T}")
        m._ctx = None
    assert pool.stats()["arenas"] == 2
    assert sorted(k[2] for k, _ in pool.arenas()) == [4, 5]
    p = _problem(rng, m, 2, 2, False, "float64")  # T=2 was dropped: captured again
    _assert_identical(_run(m, p), _run(plain, p), "T=2 again")
    assert pool.captures["forward"] == 5
    m._ctx = None
    pool.clear()
    assert pool.stats()["arenas"] == 0 and pool.stats()["bytes"] == 0
    with pytest.raises(ValueError, match="per_shape must be an int >= 1"):
        GraphPool(per_shape=0)
    with pytest.raises(ValueError, match="max_free"):
        GraphPool(max_free=True)


def test_backward_while_earlier_gradients_are_held(emulated, rng):
    """direction_backward hands out the arena's gradient buffers (dh0 here); a second backward
    of the same context while they are held runs the plain loop and leaves them alone; after
    they are released the graph runs again."""
    plain, m = _graph_module("LSTM", 3, 37, {"peephole": True}, "float64")
    p = _problem(rng, m, 4, 2, True, "float64")
    _, _, _, ctx = _engine_run(m.ex, m, p)
    _, _, _, wctx = _engine_run(plain.ex, m, p)
    cell, w, s = ctx.cell, ctx.params[0][0], ctx.saved[0][0]
    dy = np.ascontiguousarray(p["gy"])
    want = engine.direction_backward(plain.ex, cell, w, wctx.saved[0][0], dy, None, None)
    first = engine.direction_backward(m.ex, cell, w, s, dy, None, None)
    held = first[1].copy()
    second = engine.direction_backward(m.ex, cell, w, s, dy, None, None)
    pool = m.ex.graph_pool
    assert pool.replays["backward"] == 1 and pool.exhausted == 1
    assert np.array_equal(first[1], held)
    for got in (first, second):
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        assert np.array_equal(got[2], want[2])
        for k in ("w_ih", "w_hh", "b_ih", "peep"):
            assert np.array_equal(got[3][k], want[3][k]), k
    del first, second
    third = engine.direction_backward(m.ex, cell, w, s, dy, None, None)
    assert pool.replays["backward"] == 2 and pool.captures["backward"] == 1
    assert np.array_equal(third[1], want[1])


@pytest.mark.parametrize("cls, algo", [("LSTM", "auto"), ("GRU", "auto"), ("RNN", "fused")])
def test_inference_path(emulated, rng, cls, algo):
    """eval() forwards (one gate slot, time stride 0) run as graphs on arenas of their own and
    match the plain loop; training calls afterwards are unaffected. (auto: persistent, which
    eval runs as fused where there are gates; the RNN saves no gates, so fused.)"""
    plain, m = _graph_module(cls, 4, 37, {"num_layers": 2, "bidirectional": True}, "float32",
                             algo=algo)
    for mm in (plain, m):
        mm.eval()
    for i in range(2):
        p = _problem(rng, m, 5, 3, True, "float32")
        args = (p["x"], (p["h0"], p["c0"])) if cls == "LSTM" else (p["x"], p["h0"])
        got, want = m(*args, lengths=p["lengths"]), plain(*args, lengths=p["lengths"])
        assert np.array_equal(got[0], want[0])
        assert m._ctx.saved is None
    pool = m.ex.graph_pool
    assert pool.captures["forward"] == 4 and pool.replays["forward"] == 8
    assert all(k[7] == (cls != "RNN") for k, _ in pool.arenas())  # keyed as inference
    for mm in (plain, m):
        mm.train()
    p = _problem(rng, m, 5, 3, True, "float32")
    _assert_identical(_run(m, p), _run(plain, p), "train after eval")
    if algo == "auto":
        assert pool.captures["forward"] == 4  # training ran persistent: not captured


def test_persistent_and_stepwise_are_not_captured(emulated, rng):
    plain, m = _graph_module("GRU", 3, 37, {}, "float64", algo="persistent")
    p = _problem(rng, m, 4, 2, True, "float64")
    _assert_identical(_run(m, p), _run(plain, p), "persistent")
    assert m.ex.graph_pool.stats()["arenas"] == 0
    with pytest.raises(ValueError, match="algo='stepwise'"):
        gl.LSTM(3, 5, backend="emulated", algo="stepwise", cuda_graphs=True)
    m = gl.LSTM(3, 5, proj_size=2, backend="emulated", algo="fused", cuda_graphs=True, seed=1)
    ref = gl.LSTM(3, 5, proj_size=2, backend="emulated", algo="fused", seed=1)
    x = rng.standard_normal((3, 2, 3)).astype(np.float32)
    assert np.array_equal(m(x)[0], ref(x)[0])  # projection: stepwise, nothing captured
    assert m.ex.graph_pool.stats()["arenas"] == 0


def test_option_validation_pickle_and_fixed(emulated, rng):
    with pytest.raises(ValueError, match="cuda_graphs=True needs a backend .*'numpy'"):
        gl.LSTM(3, 5, backend="numpy", cuda_graphs=True)
    with pytest.raises(TypeError, match="cuda_graphs must be a bool"):
        gl.GRU(3, 5, backend="emulated", cuda_graphs="yes")
    with pytest.raises(TypeError, match="graphs must be a bool"):
        emulated.with_graphs(1)
    assert gl.LSTM(3, 5, backend="numpy").cuda_graphs is False
    try:
        cpu = get_backend("cpu")
    except Exception:
        cpu = None
    if cpu is not None:
        with pytest.raises(ValueError, match="'cpu' has none to capture"):
            gl.RNN(3, 5, backend="cpu", cuda_graphs=True)
    m = gl.LSTM(3, 5, backend="emulated", algo="fused", cuda_graphs=True, seed=0)
    assert m.ex.graphs and m.ex.graph_pool is not None and not emulated.graphs
    other = gl.LSTM(3, 5, backend="emulated", algo="fused", cuda_graphs=True, seed=0)
    assert other.ex.graph_pool is not m.ex.graph_pool  # one pool per module
    assert emulated.with_graphs(False) is emulated and m.ex.with_graphs(False).graph_pool is None
    with pytest.raises(AttributeError, match="cuda_graphs is fixed"):
        m.cuda_graphs = False
    x = rng.standard_normal((4, 2, 3)).astype(np.float32)
    y = m(x)[0].copy()
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert clone.cuda_graphs and clone.ex.graphs
        assert clone.ex.graph_pool is not m.ex.graph_pool
        assert clone.ex.algo == "fused"  # unpickling keeps the algorithm: the same bits
        np.testing.assert_array_equal(clone(x)[0], y)


def test_launch_trace_with_graphs(emulated, rng):
    """The trace of a graph module lists each fused loop as one graph replay per direction and
    phase (T kernel nodes), no kernel launch inside a loop, and as many replays as the
    emulated execution makes per call."""
    T = 7
    m = gl.LSTM(4, 40, num_layers=2, bidirectional=True, backend="emulated", dtype="float64",
                algo="fused", cuda_graphs=True)
    x = rng.standard_normal((T, 3, 4))
    tr = gl.launch_trace(m, x)
    assert tr.graphs and "with CUDA graphs" in str(tr)
    for phase, name in (("forward", "fused_forward<LstmCell, double>"),
                        ("backward", "fused_backward<LstmCell, double>")):
        graphs = [c for c in tr.calls if c.kind == "graph" and c.phase == phase]
        assert len(graphs) == 4 and all(c.name == name and c.shape == (T,) for c in graphs)
        assert tr.count(phase=phase, kind="kernel", in_loop=True) == 0
        assert tr.count(phase=phase, kind="gemm", in_loop=True) == 0
    # copies into the arenas: forward w_hh_T, lengths, h0, c0, peepholes; backward w_hh,
    # lengths, dY, dh, dc, peepholes; per direction and layer
    assert tr.count(phase="forward", kind="op", name="arena_copy") == 4 * 5
    assert tr.count(phase="backward", kind="op", name="arena_copy") == 4 * 6
    plain = gl.launch_trace(m, x, graphs=False)
    assert plain.count(kind="graph") == 0 and plain.count(kind="kernel", in_loop=True) == 2 * 4 * T
    # GEMMs are the same with and without graphs (the input projection into the arena included)
    assert tr.count(kind="gemm") == plain.count(kind="gemm")
    y = m(x)[0]
    m.backward(np.ones_like(y))
    assert m.ex.graph_pool.replays == {"forward": 4, "backward": 4}
    assert gl.launch_trace(gl.GRU(4, 8, backend="numpy"), x, graphs=True, algo="fused") \
        .count(kind="graph") == 2
    with pytest.raises(TypeError, match="graphs must be a bool"):
        gl.launch_trace(m, x, graphs="on")


# -- the emulator's graphs ----------------------------------------------------------------------

_SRC = r'''
extern "C" __global__ void axpy(float* y, const float* x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] += a * x[i];
}'''


def test_emulator_graph_capture_and_replay(rng):
    """Nothing runs while capturing; launch() runs the recorded launches with the captured
    pointers (new contents of the same arrays are read); a replay after an argument's array
    was freed raises rather than writing into freed memory."""
    from gpulstm.emulator import EmulatedModule, EmulatorError, begin_capture, end_capture
    k = EmulatedModule(_SRC).get_function("axpy")
    x = rng.standard_normal(70).astype(np.float32)
    y = np.zeros(70, np.float32)
    begin_capture()
    k((3,), (32,), (y, x, np.float32(2), np.int32(70)))
    k((3,), (32,), (y[1:], x[1:], np.float32(1), np.int32(69)))
    with pytest.raises(EmulatorError, match="already capturing"):
        begin_capture()
    g = end_capture()
    assert len(g) == 2 and g.kernels == ["axpy", "axpy"] and not y.any()
    g.launch()
    want = 2 * x
    want[1:] += x[1:]
    assert np.array_equal(y, want)
    x[:] = rng.standard_normal(70)  # same pointer, new contents
    y[:] = 0
    g.launch()
    want = 2 * x
    want[1:] += x[1:]
    assert np.array_equal(y, want)
    with pytest.raises(EmulatorError, match="not capturing"):
        end_capture()
    with pytest.raises(TypeError):  # arguments are checked at capture time
        begin_capture()
        try:
            k((1,), (32,), (y, x, 2.0, np.int32(70)))
        finally:
            end_capture()
    begin_capture()
    tmp = np.zeros(70, np.float32)
    k((3,), (32,), (tmp, x, np.float32(1), np.int32(70)))
    g2 = end_capture()
    del tmp
    gc.collect()
    with pytest.raises(EmulatorError, match="argument 0 of kernel axpy points into an array freed"):
        g2.launch()


# -- the CuPy execution's capture glue, on the CPU ----------------------------------------------

def test_cupy_capture_glue_on_a_fake_cupy(emulated, monkeypatch, rng):
    """CupyExecution's graph primitives through a fake CuPy whose stream capture is the
    emulator's: kernels loaded before the capture, the capture on a non-blocking stream made
    current, the graph replayed on the current stream, arenas keyed by device and stream; the
    results match the plain fused loop bit for bit. (The leased CuPy views are not covered:
    the fake's arrays are NumPy's.)"""
    import types

    from gpulstm.backends import cupy as cupy_backend
    from gpulstm.backends.kernel_loop import KernelLoop
    from gpulstm.emulator import EmulatedModule, begin_capture, end_capture, is_capturing
    from gpulstm.kernel_source import kernel_source
    from test_device_loop import _FakeCupy

    src = kernel_source()
    fake = _FakeCupy(EmulatedModule(code=src.code, name_expressions=list(src.name_expressions)))
    events = []

    class Stream:
        def __init__(self, null=False, non_blocking=False, ptds=False):
            self.non_blocking, self.ptr = non_blocking, 1000 + len(events)
            events.append(("stream", non_blocking))

        def __enter__(self):
            events.append("enter")
            fake.current.append(self)
            return self

        def __exit__(self, *a):
            events.append("exit")
            fake.current.pop()

        def begin_capture(self):
            assert fake.current[-1] is self and self.non_blocking
            events.append("begin")
            begin_capture()

        def end_capture(self):
            events.append("end")
            g = end_capture()
            return types.SimpleNamespace(launch=lambda stream=None: (
                events.append(("launch", stream.ptr)), g.launch()))

    default = types.SimpleNamespace(ptr=7)
    fake.current = [default]
    fake.cuda.Stream = Stream
    fake.cuda.get_current_stream = lambda: fake.current[-1]
    orig_get = fake.RawModule.get_function

    def get_function(self, name):
        assert not is_capturing(), "a kernel was loaded during a capture"
        return orig_get(self, name)
    monkeypatch.setattr(fake.RawModule, "get_function", get_function)
    monkeypatch.setattr(cupy_backend, "_modules", cupy_backend._modules.fresh())
    monkeypatch.setattr(cupy_backend, "_limits", cupy_backend._limits.fresh())
    monkeypatch.setattr(cupy_backend, "_capture_streams", cupy_backend._capture_streams.fresh())
    monkeypatch.setattr(cupy_backend.CupyExecution, "_leased", KernelLoop._leased)
    ex = cupy_backend.CupyExecution(fake, cublas=object()).with_algo("fused").with_graphs(True)
    ex._gemm_ex = numpy_gemm_ex
    plain, m = _graph_module("GRU", 5, 40, {"bidirectional": True}, "float32", poison=False)
    object.__setattr__(m, "ex", ex)
    for i in range(2):
        p = _problem(rng, m, 4, 3, True, "float32")
        _assert_identical(_run(m, p), _run(plain, p), f"call {i}")
    assert events.count(("stream", True)) == 1  # one capture stream per device
    assert events.count("begin") == events.count("end") == 4  # 2 directions x 2 phases
    assert [e for e in events if isinstance(e, tuple) and e[0] == "launch"] == [("launch", 7)] * 8
    assert {k[-2:] for k, _ in ex.graph_pool.arenas()} == {(0, 7)}


# -- on a real GPU (make gpu-check; skips here) ---------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("cls, kw", [("LSTM", {"peephole": True, "num_layers": 2}),
                                     ("GRU", {"bidirectional": True})])
def test_cupy_graphs_bit_identical(rng, cls, kw):
    """CuPy stream capture of the fused loop: graphs on vs off bit for bit over three calls
    with new data, one capture per phase and arena, the arenas' leased views released."""
    from conftest import backend_or_skip
    backend_or_skip("cupy")
    kwargs = dict(backend="cupy", dtype="float32", seed=5, algo="fused")
    plain = getattr(gl, cls)(4, 37, **kw, **kwargs)
    m = getattr(gl, cls)(4, 37, **kw, **kwargs, cuda_graphs=True)
    for i in range(3):
        p = _problem(rng, m, 6, 3, True, "float32")
        _assert_identical(_run(m, p), _run(plain, p), f"cupy call {i}")
        m._ctx = plain._ctx = None
    pool = m.ex.graph_pool
    LD = m.num_layers * m.num_directions
    assert pool.replays == {"forward": 3 * LD, "backward": 3 * LD}
    assert pool.captures["forward"] <= 2 * LD
    gc.collect()
    assert pool.stats()["in_use"] == 0

"""The device time loop (gpulstm.backends.kernel_loop, kernels/fused_step.cu) on the emulated
execution against the NumPy reference: every cell and option through the public API with
NaN-poisoned engine buffers, edge shapes around the kernels' tiles, the algorithm option."""
import numpy as np
import pytest

import gpulstm as gl
from gpulstm.backends import BackendUnavailable, get_backend
from gpulstm.backends.kernel_loop import ROWS, TILE, fused_launch_shape

from kernel_cases import MODULE_CASES, check_module


@pytest.fixture(scope="module")
def emulated():
    try:
        return get_backend("emulated")
    except BackendUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_fused_module_vs_numpy(emulated, rng, case, dtype):
    check_module("emulated", case, dtype, rng, algo="fused", poison=True)


# (id, class, kwargs, T, B, lengths?, H): H below, at and across the unit tile (32), B across
# the row tile (8), odd B, B = 1, T = 1
EDGE_CASES = [
    ("lstm-H70-B11", "LSTM", {}, 3, 11, True, 70),
    ("lstm-H32-B8-peep-noforget", "LSTM", {"peephole": True, "forget_gate": False}, 3, 8, True, 32),
    ("lstm-H1-B1-T1", "LSTM", {}, 1, 1, False, 1),
    ("gru-H33-B9-bidir", "GRU", {"bidirectional": True}, 4, 9, True, 33),
    ("gru-H5-B17-T1", "GRU", {}, 1, 17, False, 5),
    ("rnn-relu-H65-B3-2layer", "RNN", {"nonlinearity": "relu", "num_layers": 2}, 3, 3, True, 65),
    ("rnn-tanh-H31-B1-bidir", "RNN", {"bidirectional": True}, 4, 1, True, 31),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_fused_edge_shapes(emulated, rng, case, dtype):
    *case, H = case
    check_module("emulated", tuple(case), dtype, rng, H=H, algo="fused", poison=True)


def test_launch_shape_covers_every_element():
    for B in (1, 3, 8, 9, 64):
        for H in (1, 31, 32, 33, 512):
            (gx, gy), (bx, by) = fused_launch_shape(B, H)
            assert bx == TILE and 1 <= by <= ROWS
            assert gx * bx >= H > (gx - 1) * bx and gy * by >= B > (gy - 1) * by


def _count_launches(m, x, name):
    """Launches of kernel ``name`` (any dtype) during a forward and backward of ``m``."""
    pw = m.ex.pw
    counts = {}
    orig = pw.kernel

    def counting(kname, dtype):
        k = orig(kname, dtype)

        def launch(*a, **kw):
            counts[kname] = counts.get(kname, 0) + 1
            return k(*a, **kw)
        return launch
    pw.kernel = counting
    try:
        y, _ = m(x)
        m.backward(np.ones_like(y))
    finally:
        del pw.kernel
    return counts


@pytest.mark.parametrize("algo, want", [("fused", {"lstm_fused_forward": 6, "lstm_fused_backward": 6}),
                                        ("stepwise", {"lstm_forward": 6, "lstm_backward": 6})])
def test_algo_selects_the_loop(emulated, algo, want):
    m = gl.LSTM(3, 5, backend="emulated", dtype="float64", algo=algo)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    assert _count_launches(m, x, None) == want


def test_proj_size_runs_stepwise(emulated):
    m = gl.LSTM(3, 5, proj_size=2, backend="emulated", dtype="float64", algo="fused")
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    counts = _count_launches(m, x, None)
    assert "lstm_fused_forward" not in counts and counts["lstm_forward"] == 4


def test_algo_is_checked():
    with pytest.raises(ValueError, match="unknown algo 'fast'"):
        gl.LSTM(3, 5, backend="numpy", algo="fast")
    with pytest.raises(TypeError, match="algo must be a str"):
        gl.GRU(3, 5, backend="numpy", algo=1)
    with pytest.raises(ValueError, match="needs a backend with a device time loop"):
        gl.RNN(3, 5, backend="numpy", algo="fused")
    assert gl.LSTM(3, 5, backend="numpy", algo="stepwise").algo == "stepwise"


def test_with_algo_shares_the_execution(emulated):
    fused = get_backend("emulated", "fused")
    assert fused.algo == "fused" and fused.pw is emulated.pw
    assert get_backend("emulated").algo == "auto"


# -- launch trace -----------------------------------------------------------------------------

def test_launch_trace_fused_lstm_T100():
    """Fused LSTM, T=100: at most one kernel launch per step and direction, no cuBLAS call
    inside the loop; the stepwise loop issues one GEMM per step in each phase."""
    m = gl.LSTM(16, 96, backend="numpy")
    x = np.zeros((100, 5, 16), np.float32)
    tr = gl.launch_trace(m, x, algo="fused")
    for phase in ("forward", "backward"):
        assert tr.count(phase=phase, kind="kernel", in_loop=True) <= 100
        assert tr.count(phase=phase, kind="gemm", in_loop=True) == 0
        assert tr.count(phase=phase, kind="op", in_loop=True) == 0
    names = {c.name for c in tr.calls if c.kind == "kernel"}
    assert names == {"lstm_fused_forward<float>", "lstm_fused_backward<float>"}
    st = gl.launch_trace(m, x, algo="stepwise")
    for phase in ("forward", "backward"):
        assert st.count(phase=phase, kind="gemm", in_loop=True) == 100
        assert st.count(phase=phase, kind="kernel", in_loop=True) == 100
    # GEMMs outside the loop do not depend on T
    tr2 = gl.launch_trace(m, x[:7], algo="fused")
    assert tr2.count(kind="gemm") == tr.count(kind="gemm") > 0
    assert "per step" in str(tr)


@pytest.mark.parametrize("cls, kw", [("LSTM", {"peephole": True}), ("LSTM", {"proj_size": 3}),
                                     ("GRU", {"bidirectional": True, "num_layers": 2}),
                                     ("RNN", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("algo", ["fused", "stepwise"])
def test_launch_trace_matches_emulated_launches(emulated, cls, kw, algo):
    """The trace lists exactly the kernel launches (name, grid, block, shared bytes) the
    emulated execution -- the same launch code as cupy -- makes."""
    m = getattr(gl, cls)(4, 40, **kw, backend="emulated", dtype="float64", algo=algo)
    x = np.random.default_rng(1).standard_normal((3, 11, 4))
    launched = []
    pw = m.ex.pw
    orig = pw._get_function

    def recording(name):
        k = orig(name)

        def launch(grid, block, args, shared_mem=0):
            launched.append((name, tuple(grid) + (1,) * (3 - len(grid)),
                             tuple(block) + (1,) * (3 - len(block)), shared_mem))
            return k(grid, block, args, shared_mem=shared_mem)
        return launch
    pw._get_function, saved = recording, dict(pw._kernels)
    pw._kernels.clear()
    try:
        y = m(x)[0]
        m.backward(np.ones_like(y))
    finally:
        pw._get_function = orig
        pw._kernels.clear()
        pw._kernels.update(saved)
    tr = gl.launch_trace(m, x)
    traced = [(c.name, c.grid, c.block, c.shared_mem) for c in tr.calls if c.kind == "kernel"]
    assert traced == launched and len(launched) > 0


def test_launch_trace_leaves_the_module_alone():
    m = gl.GRU(3, 5, backend="numpy", dtype="float64")
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    y0 = m(x)[0]
    ctx = m._ctx
    gl.launch_trace(m, np.zeros((9, 3, 3)))
    assert m._ctx is ctx and np.array_equal(m(x)[0], y0)
    with pytest.raises(ValueError, match="3 dimensions"):
        gl.launch_trace(m, np.zeros((9, 3)))


def test_launch_trace_doctest():
    import doctest
    import gpulstm.tracing as lt
    assert doctest.testmod(lt).failed == 0

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

"""The CUDA kernels of kernels/, compiled for the CPU (backend "emulated"), against the NumPy
reference: every kernel at the pointwise level with NaN-poisoned outputs, and every cell and
option through the public API (outputs, final states, dx, all gradients, grad_hx)."""
import numpy as np
import pytest

from gpulstm.backends import get_backend
from gpulstm.backends.kernel_pointwise import BLOCK

from kernel_cases import FLAGS, KERNELS, MODULE_CASES, check_module, check_pointwise


# (B, H): one row; H neither a multiple of 32 nor of the block; B*H spanning several blocks
# with a partial last one
SIZES = [(1, 37), (5, 37), (3, 300)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_pointwise(emulated, rng, kernel, dtype):
    assert 3 * 300 > 2 * BLOCK  # the last size really covers several blocks
    for B, H in SIZES:
        for flags in FLAGS.get(kernel, (0,)):
            check_pointwise(emulated.pw, np.asarray, np.asarray, rng, kernel, B, H, dtype, flags)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_module_vs_numpy(emulated, rng, case, dtype):
    check_module("emulated", case, dtype, rng)


def test_output_dtype_and_module(emulated):
    import gpulstm as gl
    m = gl.LSTM(3, 5, backend="emulated", dtype="float64")
    y, (h, c) = m(np.zeros((2, 1, 3)))
    assert isinstance(y, np.ndarray) and y.dtype == np.float64 and m.backend == "emulated"


def test_launch_refuses_sizes_beyond_int_indexing():
    """4 * B * H >= 2**31 would overflow the kernels' int indices: refused before launch."""
    from gpulstm.backends.kernel_pointwise import KernelPointwise

    def never(name):
        raise AssertionError("no kernel may be looked up or launched")

    pw = KernelPointwise(never, np)
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**16, 2**13), (0, 0))
    with pytest.raises(ValueError, match="too large"):
        pw.rnn_forward(big, big, big, None, 0, big, big, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gate_activations_in_the_tails(dtype):
    """Pre-activations far into both tails (+-20 .. +-1000): the kernels' sigmoid and tanh stay
    finite and agree with the NumPy reference (checked on the LSTM and GRU forward steps)."""
    from gpulstm.backends import numpy_pointwise as ref
    ex = get_backend("emulated")
    B, H = 3, 40
    rng = np.random.default_rng(5)
    big = rng.choice([-1000, -100, -30, -20, 20, 30, 100, 1000], size=(B, 4 * H)).astype(dtype)
    small = (rng.standard_normal((B, 4 * H)) * 0.1).astype(dtype)
    c_prev = rng.standard_normal((B, H)).astype(dtype)
    h_prev = rng.standard_normal((B, H)).astype(dtype)
    lengths = np.full(B, 5, np.int32)
    peep = np.zeros((3, H), dtype)
    gx3, gh3 = big[:, :3 * H].copy(), small[:, :3 * H].copy()  # kernels take C-contiguous rows
    outs = {}
    for name, pw in (("ref", ref), ("emu", ex.pw)):
        o = [np.full((B, 4 * H), np.nan, dtype)] + [np.full((B, H), np.nan, dtype) for _ in range(3)]
        pw.lstm_forward(big, small, c_prev, h_prev, lengths, 0, peep, *o, 0)
        g = [np.full((B, 4 * H), np.nan, dtype)] + [np.full((B, H), np.nan, dtype) for _ in range(2)]
        pw.gru_forward(gx3, gh3, small[0, :H].copy(), h_prev, lengths, 0, *g)
        outs[name] = o + g
    for r, e in zip(outs["ref"], outs["emu"]):
        assert np.isfinite(e).all()
        np.testing.assert_allclose(e, r, rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)

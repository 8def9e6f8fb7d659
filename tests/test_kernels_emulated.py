"""The CUDA kernels of kernels/, compiled for the CPU (backend "emulated"), against the NumPy
reference: every kernel at the pointwise level with NaN-poisoned outputs, and every cell and
option through the public API (outputs, final states, dx, all gradients, grad_hx)."""
import numpy as np
import pytest

from gpulstm.backends import BackendUnavailable, get_backend
from gpulstm.backends.kernel_pointwise import BLOCK

from kernel_cases import FLAGS, KERNELS, MODULE_CASES, check_module, check_pointwise


@pytest.fixture(scope="module")
def emulated():
    try:
        return get_backend("emulated")
    except BackendUnavailable as e:
        pytest.skip(str(e))


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

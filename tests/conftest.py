import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def backend_or_skip(name):
    """The execution ``name``; skips the test with the reason when it cannot run here."""
    from gpulstm.backends import BackendUnavailable, get_backend
    try:
        return get_backend(name)
    except BackendUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def emulated():
    """The emulated execution (kernels/ compiled for the CPU); skips with the reason without it."""
    return backend_or_skip("emulated")


def numpy_gemm_ex(a, b, out, beta):
    """A NumPy stand-in for CupyExecution._gemm_ex (out = a @ b + beta * out; out not read
    when beta = 0, as cuBLAS), for tests that drive the cupy execution through a fake CuPy
    (tests/test_tf32.py checks the cublasGemmEx call itself)."""
    out[...] = a @ b + (beta * out if beta else 0)

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


def record_kernels(monkeypatch):
    """The kernels the kernel executions look up from now on, as a set of names (a loop kernel
    with its cell: "fused_forward<CifgCell>")."""
    from gpulstm.backends.kernel_pointwise import KernelPointwise
    ran = set()
    orig = KernelPointwise.kernel

    def kernel(self, name, dtype, cell=None):
        ran.add(f"{name}<{cell}>" if cell else name)
        return orig(self, name, dtype, cell)
    monkeypatch.setattr(KernelPointwise, "kernel", kernel)
    return ran

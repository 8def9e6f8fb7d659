import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="module")
def emulated():
    """The emulated execution (kernels/ compiled for the CPU); skips with the reason without it."""
    from gpulstm.backends import BackendUnavailable, get_backend
    try:
        return get_backend("emulated")
    except BackendUnavailable as e:
        pytest.skip(str(e))

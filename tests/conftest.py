import numpy as np
import pytest


@pytest.fixture
def rng(request):
    """A fresh generator per test, seeded from the test's name so failures reproduce."""
    import zlib
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))

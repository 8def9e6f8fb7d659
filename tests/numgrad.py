"""Central finite differences, the float64 oracle of every gradient check."""
import numpy as np


def numeric_grad(f, a, eps=1e-6):
    """d f() / d a by central differences, perturbing each element of ``a`` in place
    (restored afterwards); ``f`` takes no arguments and returns a float."""
    g = np.empty_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    assert np.shares_memory(flat, a), "numeric_grad needs a contiguous array to perturb in place"
    for i in range(flat.size):
        v = flat[i]
        flat[i] = v + eps
        fp = f()
        flat[i] = v - eps
        fm = f()
        flat[i] = v
        gflat[i] = (fp - fm) / (2 * eps)
    return g

"""The NumPy execution: NumPy arrays, BLAS GEMMs, the reference pointwise steps."""
from __future__ import annotations

import numpy as np

from .. import _malloc
from . import numpy_pointwise, philox
from .._checks import host_memory_guard
from .options import ExecutionOptions


class HostExecution(ExecutionOptions):
    """An execution on NumPy arrays; ``pw`` supplies the pointwise steps. Its GEMMs compute
    full float32 whatever ``allow_tf32`` says (TF32 is a GPU tensor-core format; torch ignores
    the flag on the CPU too)."""

    xp = np
    bf16_storage = True  # through gpulstm.lowp.StorageExecution (the engine's stepwise loop)

    def __init__(self, name, pw):
        self.name = name
        self.pw = pw
        _malloc.tune()  # fresh pages on every call otherwise (see gpulstm._malloc)

    def asarray(self, a, dtype):
        return np.ascontiguousarray(a, dtype=dtype)

    def from_user(self, a):
        """Any array-like the user passes -> a NumPy array (no copy, no dtype change)."""
        return np.asarray(a)

    def to_numpy(self, a):
        return np.asarray(a)

    def matmul(self, a, b, out):
        np.matmul(a, b, out=out)

    def matmul_acc(self, a, b, out):
        out += a @ b

    def linear(self, a, b, bias, out):
        """out = a @ b + bias (bias: one row, or None)."""
        self.matmul(a, b, out=out)
        if bias is not None:
            out += bias

    def transposed(self, a):
        """A C-contiguous copy of a.T."""
        return self.xp.ascontiguousarray(a.T)

    def dropout_mask(self, shape, p, seed, offset, dtype):
        """The scaled dropout keep mask of ``shape`` for probability ``p`` from the Philox
        stream (seed, offset) (:mod:`.philox`; the kernel executions draw the same bits)."""
        return philox.dropout_mask(shape, p, seed, offset, dtype)

    def synchronize(self):
        pass

    def memory_guard(self, nbytes, what="the forward pass"):
        """Turn a host out-of-memory error inside the block into a MemoryError that names
        ``what`` and ``nbytes`` (the saved activations), as the CuPy execution does."""
        return host_memory_guard(nbytes, what)

    def __repr__(self):
        return f"<gpulstm execution {self.name!r}>"


def create():
    return HostExecution("numpy", numpy_pointwise)

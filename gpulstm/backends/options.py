"""Per-module options every execution carries: TF32 for the cuBLAS GEMMs.

An execution is shared by the modules built on the same backend; a module that wants another
option value gets a shallow copy (:meth:`ExecutionOptions.with_tf32`), sharing the compiled
kernels.
"""
from __future__ import annotations

import copy

import numpy as np


class ExecutionOptions:
    #: float32 GEMMs of cuBLAS may round their inputs to TF32 (10-bit mantissa) on tensor cores
    #: (``cupy``; ``emulated`` rounds the same way on the CPU; ``numpy`` and ``cpu`` compute
    #: full float32 whatever the flag, as torch does on the CPU)
    allow_tf32 = False
    #: runs ``dtype='bfloat16'`` (bf16 storage, float32 compute: :mod:`gpulstm.lowp`); the
    #: host executions do, the kernel executions (their kernels read float32/float64) not yet
    bf16_storage = False

    def with_tf32(self, allow):
        """This execution with ``allow_tf32`` set (a shallow copy; the same object when
        unchanged)."""
        if not isinstance(allow, (bool, np.bool_)):
            raise TypeError(f"allow_tf32 must be a bool; got {type(allow).__name__} {allow!r}")
        if bool(allow) == self.allow_tf32:
            return self
        ex = copy.copy(self)
        ex.allow_tf32 = bool(allow)
        return ex


def tf32_round(a):
    """float32 ``a`` rounded to TF32 (8-bit exponent, 10-bit mantissa; nearest, ties to even),
    returned as float32; other dtypes returned unchanged. Inf and NaN pass as they are; a
    finite value that rounds past the largest TF32 number becomes inf."""
    a = np.asarray(a)
    if a.dtype != np.float32:
        return a
    u = np.ascontiguousarray(a).view(np.uint32)
    finite = (u & 0x7F800000) != 0x7F800000
    r = (u + (0xFFF + ((u >> 13) & 1))) & np.uint32(0xFFFFE000)
    return np.where(finite, r, u).view(np.float32).reshape(a.shape)

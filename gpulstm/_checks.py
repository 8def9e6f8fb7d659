"""Argument checks shared by every public entry point.

Each check raises ValueError (wrong shape or value) or TypeError (wrong type or dtype) with a
message naming what was expected and what was received. Nothing is broadcast, cast between
float precisions, or truncated.
"""
from __future__ import annotations

import contextlib
import functools
import numbers

import numpy as np

DTYPES = ("float32", "float64", "bfloat16")


def check_dtype_name(dtype):
    """A dtype name or object -> np.dtype, one of DTYPES; None means float32 (torch's default).
    "bfloat16" (or ``ml_dtypes.bfloat16``) -> ``ml_dtypes.bfloat16``'s dtype: bf16 storage,
    float32 compute (:mod:`gpulstm.lowp`)."""
    if dtype is None:
        return np.dtype("float32")
    if isinstance(dtype, str) and dtype == "bfloat16":
        from .lowp import bfloat16
        return bfloat16()
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be one of {DTYPES}; got {dtype!r}") from None
    if dt.name not in DTYPES:
        raise TypeError(f"dtype must be one of {DTYPES}; got {dt.name!r}")
    return dt


def check_int(name, value, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value}")
    return value


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__} {value!r}")
    return bool(value)


def check_nonlinearity(nonlinearity):
    """The activation of RNN and IndRNN layers and cells: 'tanh' or 'relu'."""
    if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; got {nonlinearity!r}")
    return nonlinearity


def check_dropout(p):
    """A dropout probability in [0, 1] (torch's range; 1 zeroes every element)."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout must be a number in [0, 1] (the probability of zeroing an "
                         f"element); got {type(p).__name__} {p!r}")
    return float(p)


def check_seed(seed):
    """None (fresh entropy) or an int >= 0 (what np.random.SeedSequence accepts)."""
    if seed is None:
        return None
    return check_int("seed", seed, 0)


@functools.lru_cache(maxsize=1)
def host_memory_limit():
    """Bytes this host could ever hand out: physical memory plus swap (``/proc/meminfo`` on
    Linux, else ``os.sysconf``), or None where unknown. Read once per process: parsing
    /proc/meminfo costs ~40 us, and every forward and backward asks."""
    import os
    try:
        with open("/proc/meminfo", encoding="ascii") as fd:
            info = dict(line.split(":", 1) for line in fd if ":" in line)
        return sum(int(info[k].split()[0]) * 1024 for k in ("MemTotal", "SwapTotal") if k in info) \
            or None
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


@contextlib.contextmanager
def host_memory_guard(nbytes, what):
    """A MemoryError at once where ``what`` needs more than the host could ever give
    (:func:`host_memory_limit`: rather than allocating until the system gives out), and a host
    allocation failure inside the block (NumPy's MemoryError, or its ValueError for sizes
    beyond the address space) turned into a MemoryError naming ``what`` and ``nbytes``."""
    limit = host_memory_limit()
    if limit is not None and nbytes > limit:
        raise MemoryError(f"out of host memory in {what}: it needs about {nbytes} bytes "
                          f"({nbytes / 2**30:.2f} GiB), more than this machine's memory and swap "
                          f"({limit / 2**30:.2f} GiB); use smaller sizes (sequence length, batch, "
                          f"hidden size, layers)")
    try:
        yield
    except (MemoryError, ValueError) as e:
        if isinstance(e, ValueError) and "too big" not in str(e) and "Maximum allowed" not in str(e):
            raise
        raise MemoryError(f"out of host memory in {what}: it needs about {nbytes} bytes "
                          f"({nbytes / 2**30:.2f} GiB); use smaller sizes (sequence length, "
                          f"batch, hidden size, layers). NumPy said: {e}") from e


def check_array(name, a, shape, dtype):
    """``a`` (any array of the backend's module) must have exactly ``shape`` and ``dtype``.
    ``shape`` entries of None match any size; the description names the axes."""
    dt = _dtype_of(name, a)
    if dt.kind != "f" and dt.name != "bfloat16":
        raise TypeError(f"{name} must be a floating-point array of dtype {dtype.name}; got dtype {dt}")
    if dt != dtype:
        raise TypeError(f"{name} must have dtype {dtype.name} (the module's dtype); got {dt} "
                        f"(convert it explicitly, nothing is cast silently)")
    got = tuple(a.shape)
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}; got {got}")
    return a


def _dtype_of(name, a):
    try:
        return np.dtype(a.dtype)
    except (AttributeError, TypeError):
        raise TypeError(f"{name} must be an array with a NumPy dtype; got {type(a).__name__}") from None


def check_lengths(lengths, T, B):
    """Per-sequence lengths -> int32 NumPy array of shape (B,), each in [1, T]."""
    arr = np.asarray(lengths)
    if B == 0 and arr.shape == (0,):  # an empty batch: [] (NumPy makes it float64)
        return arr.astype(np.int32)
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers; got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"lengths must be 1-D with one entry per sequence (B={B}); got shape {arr.shape}")
    if arr.shape[0] != B:
        raise ValueError(f"lengths must have B={B} entries; got {arr.shape[0]}")
    if B == 0:
        return arr.astype(np.int32)
    if arr.min() < 1:
        raise ValueError(f"lengths must be >= 1; got min {int(arr.min())}")
    if arr.max() > T:
        raise ValueError(f"lengths must be <= T={T}; got max {int(arr.max())}")
    return arr.astype(np.int32)

"""Argument checks shared by every public entry point.

Each check raises ValueError (wrong shape or value) or TypeError (wrong type or dtype) with a
message naming what was expected and what was received. Nothing is broadcast, cast between
float precisions, or truncated.
"""
from __future__ import annotations

import numbers

import numpy as np

DTYPES = ("float32", "float64")


def check_dtype_name(dtype):
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


def check_array(name, a, shape, dtype):
    """``a`` (any array of the backend's module) must have exactly ``shape`` and ``dtype``.
    ``shape`` entries of None match any size; the description names the axes."""
    dt = _dtype_of(name, a)
    if dt.kind != "f":
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
    if arr.dtype == bool or arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers; got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"lengths must be 1-D with one entry per sequence (B={B}); got shape {arr.shape}")
    if arr.shape[0] != B:
        raise ValueError(f"lengths must have B={B} entries; got {arr.shape[0]}")
    if arr.min() < 1:
        raise ValueError(f"lengths must be >= 1; got min {int(arr.min())}")
    if arr.max() > T:
        raise ValueError(f"lengths must be <= T={T}; got max {int(arr.max())}")
    return arr.astype(np.int32)

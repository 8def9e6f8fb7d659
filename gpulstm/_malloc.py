"""glibc malloc settings for the host executions (numpy, cpu, emulated).

A forward/backward allocates its buffers afresh on every call (S, C, the gate history, dG:
each from a few hundred KB to tens of MB). glibc serves blocks above its *mmap threshold*
with mmap and returns them to the kernel on free, and trims the top of the heap above its
*trim threshold*; the dynamic threshold only rises to the largest block freed so far, so
blocks of exactly that size keep being mapped afresh. Every call then faults in and zeroes
its buffers page by page: measured on a 2-core VM, 1,180 page faults per training call at
T=100, B=32, H=32 and 3.67 ms per call in a training loop instead of 1.61 ms with the
settings below (torch.nn.LSTM: 1.36-1.40 ms either way).

:func:`tune` (called once when a host execution is created) raises both thresholds, as
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would: blocks up to 32 MB (glibc's
maximum) come from the heap and up to 512 MB of freed heap stays with the process for the
next call. It is process-wide, so it is skipped when the user set either variable, when
``GPULSTM_MALLOC_TUNING=0``, and on a C library other than glibc.
"""
from __future__ import annotations

import ctypes
import os
import platform
import threading

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit
TRIM_THRESHOLD = 512 << 20

_lock = threading.Lock()
_state = None  # None: not tried yet; else the reason string / True


def tune():
    """Apply the settings once per process. Returns True when they are in effect, else a
    string saying why not."""
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def _apply():
    if os.environ.get("GPULSTM_MALLOC_TUNING", "1") == "0":
        return "disabled by GPULSTM_MALLOC_TUNING=0"
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return "the user's MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ apply"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "no mallopt"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "mallopt refused"
    return True

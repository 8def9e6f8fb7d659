"""The CUDA version the installed NVIDIA driver supports, and the CuPy extra that matches it.

Standard library only, so that it runs before anything is installed: the Makefile's install
step runs ``python3 gpulstm/backends/cuda_driver.py``, which prints the extra to add to
``pip install -e ".[test,<extra>]"`` (``cuda12`` or ``cuda13``) or nothing on a machine
without a usable driver. ``--explain`` prints what was found instead.

The driver is asked through ``libcuda`` (``cuDriverGetVersion``, needs no GPU tools) and, if
that library cannot be loaded, through the header of ``nvidia-smi`` ("CUDA Version: 12.4").
``GPULSTM_CUDA_EXTRA=cuda12|cuda13|none`` overrides the detection.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run by path: keep this folder's numpy.py/cupy.py off the path
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

import ctypes  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

EXTRAS = {12: "cuda12", 13: "cuda13"}  # CUDA major of the driver -> extra in pyproject.toml
_LIBCUDA = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def _from_libcuda():
    for name in _LIBCUDA:
        try:
            lib = ctypes.CDLL(name)
            n = ctypes.c_int(0)
            if lib.cuDriverGetVersion(ctypes.byref(n)) == 0 and n.value > 0:
                return n.value // 1000, n.value % 1000 // 10, f"libcuda ({name})"
        except (OSError, AttributeError):
            continue
    return None


def parse_nvidia_smi(text):
    """(major, minor) from nvidia-smi's header line "... CUDA Version: 12.4 ...", or None."""
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2])) if m else None


def _from_nvidia_smi():
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    v = parse_nvidia_smi(out)
    return None if v is None else (*v, "nvidia-smi")


def driver_cuda_version():
    """(major, minor, source) of the newest CUDA the driver supports, or None without one."""
    return _from_libcuda() or _from_nvidia_smi()


def cupy_extra(version="detect"):
    """The pyproject extra with the CuPy wheel for ``version`` ((major, minor, ...) of the
    driver, None for none; detected by default): ``cuda12`` for 12.x, ``cuda13`` for 13.x and newer, None
    without a driver or for CUDA < 12 (no extra ships that CuPy). ``GPULSTM_CUDA_EXTRA``
    (cuda12, cuda13 or none) overrides."""
    env = os.environ.get("GPULSTM_CUDA_EXTRA")
    if env is not None:
        if env not in (*EXTRAS.values(), "none", ""):
            raise ValueError(f"GPULSTM_CUDA_EXTRA must be one of {(*EXTRAS.values(), 'none')}; got {env!r}")
        return env if env in EXTRAS.values() else None
    if version == "detect":
        version = driver_cuda_version()
    if version is None or version[0] < min(EXTRAS):
        return None
    return EXTRAS.get(version[0], EXTRAS[max(EXTRAS)])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    v = driver_cuda_version()
    extra = cupy_extra(v)
    if "--explain" in argv:
        found = "no NVIDIA driver found" if v is None else f"driver supports CUDA {v[0]}.{v[1]} ({v[2]})"
        print(f"{found}; CuPy extra: {extra or 'none'}")
    elif extra:
        print(extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())

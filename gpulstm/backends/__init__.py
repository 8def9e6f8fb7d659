"""Backend registry: name -> execution (array module, GEMMs, pointwise ops).

=========== ======= ================ =============================================
backend     arrays  GEMMs            pointwise step
=========== ======= ================ =============================================
numpy       NumPy   NumPy (BLAS)     :mod:`.numpy_pointwise` (the reference)
cpu         NumPy   NumPy (BLAS);    ``kernels/cpu/sequence.cpp`` compiled (g++, OpenMP):
                    recurrent GEMM   the whole time loop of a direction in one call
                    in the loop      (:mod:`.cpu`)
cupy        CuPy    cuBLAS via CuPy  ``kernels/`` through RawModule / NVRTC
emulated    NumPy   NumPy            ``kernels/`` compiled for the CPU (g++)
=========== ======= ================ =============================================

Imports are deferred: nothing imports CuPy unless ``cupy`` (or ``auto``) is asked for.

``"auto"`` picks the fastest execution that runs here: ``cupy`` when a usable GPU is present
and its kernels compile; else ``cpu`` when its library compiles (a host C++ compiler with
OpenMP); else ``numpy``. All three give the NumPy reference's numbers up to rounding
(float64 ~1e-15, tested to 1e-12; float32 to 1e-5); pass ``backend="numpy"`` for the
reference's exact bits.
"""
from __future__ import annotations

import importlib

_MODULES = {
    "numpy": "gpulstm.backends.numpy",
    "cupy": "gpulstm.backends.cupy",
    "emulated": "gpulstm.backends.emulated",
    "cpu": "gpulstm.backends.cpu",
}
BACKENDS = tuple(_MODULES)
_cache = {}


class BackendUnavailable(RuntimeError):
    """A backend that exists but cannot run on this machine; the message says why."""


def get_backend(name="auto", algo="auto"):
    """Return the execution for ``name`` ("auto", "numpy", "cpu", "cupy", "emulated") running
    the time loop with ``algo`` ("auto", "stepwise", "fused", "persistent"; see
    :mod:`.kernel_loop`). The choice exists on cupy and emulated; numpy accepts "auto" and
    "stepwise" (its only loop), cpu "auto" (its compiled loop).

    "auto" picks cupy when a usable GPU is present and its kernels compile, else cpu when its
    compiled loops build here, else numpy.
    Raises ValueError for an unknown name and BackendUnavailable (with the reason) for a
    backend that cannot run here.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a str, one of {('auto',) + BACKENDS}; got {type(name).__name__}")
    from .kernel_loop import check_algo
    check_algo(algo)
    if name == "auto":
        for candidate in ("cupy", "cpu"):
            try:
                return get_backend(candidate, algo)
            except BackendUnavailable:
                pass
        return get_backend("numpy", algo)
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; expected one of {('auto',) + BACKENDS}")
    if name not in _cache:
        mod = importlib.import_module(_MODULES[name])
        _cache[name] = mod.create()  # raises BackendUnavailable with the reason
    ex = _cache[name]
    if hasattr(ex, "with_algo"):
        return ex.with_algo(algo)
    if algo == "auto" or (algo == "stepwise" and not hasattr(ex, "sequence_forward")):
        return ex
    raise ValueError(f"algo={algo!r} needs a backend with a choice of time loops (cupy, "
                     f"emulated); backend {name!r} runs its one loop (algo='auto')")


def with_graphs(ex):
    """``ex`` with its fused time loop captured into CUDA graphs (a copy with its own arena
    pool, :mod:`.graphs`). Raises ValueError for an execution without a device loop (numpy,
    cpu) and for ``algo="stepwise"`` (a cuBLAS GEMM per step cannot be captured)."""
    if not hasattr(ex, "with_graphs"):
        raise ValueError(f"cuda_graphs=True needs a backend whose time loop launches CUDA kernels "
                         f"(cupy, or emulated on the CPU); backend {ex.name!r} has none to "
                         f"capture")
    return ex.with_graphs(True)


def available_backends():
    """{name: None if usable else the reason it is not} for every backend."""
    out = {}
    for name in BACKENDS:
        try:
            get_backend(name)
            out[name] = None
        except BackendUnavailable as e:
            out[name] = str(e)
    return out


def explain_auto():
    """(name, reason): the backend ``"auto"`` picks on this machine (the one the main job,
    ``make run``, uses) and why, with the install hint when a CUDA driver is present but CuPy
    is missing."""
    try:
        ex = get_backend("cupy")
    except BackendUnavailable as e:
        why = f"cupy is unavailable: {e}"
        from .cuda_driver import cupy_extra, driver_cuda_version
        v = driver_cuda_version()
        if v is None:
            why += "; no NVIDIA driver found (libcuda, nvidia-smi)"
        else:
            extra = cupy_extra(v)
            why += f"; the driver supports CUDA {v[0]}.{v[1]} ({v[2]})"
            if extra:
                why += f": `make` installs CuPy with it (pip install -e '.[{extra}]')"
        return get_backend("numpy").name, why
    cp = ex.xp
    dev = cp.cuda.runtime.getDevice()
    try:
        gpu = cp.cuda.runtime.getDeviceProperties(dev)["name"]
        gpu = gpu.decode() if isinstance(gpu, bytes) else str(gpu)
    except Exception:  # the name is decoration only
        gpu = "a CUDA GPU"
    return ex.name, f"CuPy {cp.__version__} runs on device {dev} ({gpu}) and the kernels compile"

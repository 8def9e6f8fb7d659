"""The CuPy execution: CuPy arrays, cuBLAS GEMMs, the CUDA kernels of ``kernels/``.

CuPy is imported here only, when this backend is asked for. The kernels are compiled once per
process and device with ``cupy.RawModule`` (NVRTC; CuPy's on-disk cache keys on the whole
assembled source, so a second process loads the cubin from disk). ``create()`` raises
:class:`~gpulstm.backends.BackendUnavailable` naming what is missing: CuPy, a CUDA device, or
kernels that compile (with the NVRTC log).

GEMMs go through cuBLAS in CuPy's default math mode: full FP32, no TF32 unless the user sets
``CUPY_TF32=1`` before importing CuPy.
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import BackendUnavailable
from .kernel_loop import KernelLoop
from .kernel_pointwise import KernelPointwise
from ..kernel_source import NVRTC_OPTIONS, kernel_source

#: DLPack device types whose memory CuPy can use without a copy (kDLCUDA, kDLCUDAManaged)
_DLPACK_CUDA = (2, 13)

_modules = {}  # (device id, cooperative) -> compiled cupy.RawModule
_limits = {}  # device id -> (SM count, opt-in shared bytes per block)
_capture_streams = {}  # device id -> the non-blocking stream graphs are captured on


def _import_cupy():
    try:
        import cupy
    except ImportError as e:
        raise BackendUnavailable(
            "backend 'cupy' needs CuPy, which is not installed "
            "(pip install 'gpulstm[cuda12]' or 'gpulstm[cuda13]' to match the driver): " + str(e)) from e
    except Exception as e:  # broken CUDA libraries surface at import on some installs
        raise BackendUnavailable(f"backend 'cupy': importing CuPy failed: {type(e).__name__}: {e}") from e
    return cupy


def compiled_module(cp, device_id=None, cooperative=False):
    """The RawModule of every kernel for ``device_id`` (default: current), compiled once.
    ``cooperative``: the module whose launches are cooperative (``cuLaunchCooperativeKernel``,
    CuPy's ``enable_cooperative_groups``), for the persistent kernels; compiled on first use.

    Raises ``cupy.cuda.compiler.CompileException`` (its text holds the NVRTC log) on failure.
    """
    dev = cp.cuda.runtime.getDevice() if device_id is None else int(device_id)
    mod = _modules.get((dev, cooperative))
    if mod is None:
        src = kernel_source()
        with cp.cuda.Device(dev):
            mod = cp.RawModule(code=src.code, options=NVRTC_OPTIONS,
                               name_expressions=src.name_expressions,
                               enable_cooperative_groups=cooperative)
            mod.compile()  # now, so that errors surface in create() and not at the first step
        _modules[(dev, cooperative)] = mod
    return mod


class _DeviceKernel:
    """Launcher of one name expression on whichever device is current at the call."""

    __slots__ = ("_cp", "_name", "_fns")

    def __init__(self, cp, name):
        self._cp, self._name, self._fns = cp, name, {}

    def prepare(self, cooperative=False):
        """The function for the current device, compiled and loaded now (a graph capture must
        not compile, load modules or set attributes: KernelLoop._capture calls this first)."""
        dev = self._cp.cuda.runtime.getDevice()
        f = self._fns.get((dev, cooperative))
        if f is None:
            f = self._fns[(dev, cooperative)] = compiled_module(
                self._cp, dev, cooperative).get_function(self._name)
        return f

    def __call__(self, grid, block, args, shared_mem=0, cooperative=False):
        f = self.prepare(cooperative)
        if shared_mem > 48 * 1024 and f.max_dynamic_shared_size_bytes < shared_mem:
            f.max_dynamic_shared_size_bytes = shared_mem  # the opt-in above 48 KiB
        f(grid, block, args, shared_mem=shared_mem)


class CupyExecution(KernelLoop):
    """Execution on CuPy arrays of the current device and stream; the time loop runs as
    chosen by ``algo`` (:mod:`.kernel_loop`)."""

    name = "cupy"

    def __init__(self, cp):
        self.xp = cp
        self._gemm = cp.cublas.gemm
        self._oom = cp.cuda.memory.OutOfMemoryError
        self.pw = KernelPointwise(lambda name: _DeviceKernel(cp, name), cp)

    def device_limits(self):
        """(SM count, opt-in shared bytes per block) of the current device (queried once)."""
        dev = self.xp.cuda.runtime.getDevice()
        limits = _limits.get(dev)
        if limits is None:
            a = self.xp.cuda.Device(dev).attributes
            limits = _limits[dev] = (a["MultiProcessorCount"], a["MaxSharedMemoryPerBlockOptin"])
        return limits

    # -- CUDA graphs of the fused loop (kernel_loop.KernelLoop.with_graphs) -------------------
    # The loop's launches are captured on a private non-blocking stream (capture cannot run on
    # the legacy default stream; nothing executes while capturing), the graph is replayed on
    # the current stream, so it is ordered after the copies into its arena and before the
    # GEMMs that read its results, as the launches were. Arenas are keyed by device and stream.
    def _graph_scope(self):
        cp = self.xp
        return (cp.cuda.runtime.getDevice(), cp.cuda.get_current_stream().ptr)

    def _begin_capture(self):
        cp = self.xp
        dev = cp.cuda.runtime.getDevice()
        stream = _capture_streams.get(dev)
        if stream is None:
            stream = _capture_streams[dev] = cp.cuda.Stream(non_blocking=True)
        stream.__enter__()  # the current stream: RawKernel launches go to it
        stream.begin_capture()  # relaxed mode (CuPy's default)

    def _end_capture(self):
        stream = _capture_streams[self.xp.cuda.runtime.getDevice()]
        try:
            return stream.end_capture()  # a cupy.cuda.Graph, instantiated
        finally:
            stream.__exit__(None, None, None)

    def _launch_graph(self, graph):
        graph.launch(self.xp.cuda.get_current_stream())

    def _leased(self, a, lease):
        """A CuPy view of arena array ``a`` whose memory is owned by ``(lease, a)``: every
        array derived from it shares that memory object, so keeps the lease alive."""
        cp = self.xp
        mem = a.data.mem  # the whole allocation
        owned = cp.cuda.UnownedMemory(mem.ptr, mem.size, (lease, a), a.device.id)
        ptr = cp.cuda.MemoryPointer(owned, a.data.ptr - mem.ptr)
        return cp.ndarray(a.shape, a.dtype, ptr, strides=a.strides)

    def asarray(self, a, dtype):
        """NumPy or CuPy input -> C-contiguous CuPy array of ``dtype`` (copies only if needed)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def from_user(self, a):
        """Any array the user passes -> a CuPy array, no dtype change.

        CuPy arrays pass as they are; CUDA memory from DLPack producers (e.g. a CUDA torch
        tensor) or ``__cuda_array_interface__`` producers is used without a copy; host arrays
        (NumPy, CPU tensors, lists) are copied to the current device.
        """
        cp = self.xp
        if isinstance(a, cp.ndarray):
            return a
        if isinstance(a, np.ndarray):
            return cp.asarray(a)
        if hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__"):
            if a.__dlpack_device__()[0] in _DLPACK_CUDA:
                return cp.from_dlpack(a)
        elif hasattr(a, "__cuda_array_interface__"):
            return cp.asarray(a)
        return cp.asarray(np.asarray(a))

    def to_numpy(self, a):
        return self.xp.asnumpy(a)

    def matmul(self, a, b, out):
        self.xp.matmul(a, b, out=out)

    def matmul_acc(self, a, b, out):
        """out += a @ b, as one cuBLAS GEMM with beta = 1 (no temporary) for 2-D operands."""
        if (a.ndim == 2 and b.ndim == 2 and out.ndim == 2 and a.dtype == b.dtype == out.dtype
                and (out.flags.c_contiguous or out.flags.f_contiguous)):
            self._gemm("N", "N", a, b, out=out, alpha=1.0, beta=1.0)
        else:
            out += a @ b

    def linear(self, a, b, bias, out):
        """out = a @ b + bias (bias: one row, or None)."""
        self.xp.matmul(a, b, out=out)
        if bias is not None:
            out += bias

    def transposed(self, a):
        """A C-contiguous copy of a.T."""
        return self.xp.ascontiguousarray(a.T)

    def synchronize(self):
        self.xp.cuda.get_current_stream().synchronize()

    @contextlib.contextmanager
    def memory_guard(self, nbytes, what="the forward pass"):
        """Turn a CUDA out-of-memory error inside the block into a MemoryError that says how
        much device memory ``what`` needs (``nbytes``: the saved activations)."""
        try:
            yield
        except self._oom as e:
            pool = self.xp.get_default_memory_pool()
            raise MemoryError(
                f"out of GPU memory in {what}: the saved activations need about {nbytes} bytes "
                f"({nbytes / 2**30:.2f} GiB) on device {self.xp.cuda.runtime.getDevice()}; "
                f"CuPy's pool holds {pool.total_bytes()} bytes. Use a shorter sequence, a smaller "
                f"batch or hidden size, or fewer layers. CuPy said: {e}") from e

    def __repr__(self):
        return f"<gpulstm execution {self.name!r}>"


def create():
    cp = _import_cupy()
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, no device, ...
        raise BackendUnavailable(f"backend 'cupy' needs a CUDA device; CUDA reports: {e}") from e
    if n < 1:
        raise BackendUnavailable("backend 'cupy' needs a CUDA device; none found")
    try:
        compiled_module(cp)
    except cp.cuda.compiler.CompileException as e:
        raise BackendUnavailable(f"backend 'cupy': the kernels failed to compile with NVRTC:\n{e}") from e
    except Exception as e:  # NVRTC missing, driver too old for the PTX, ...
        raise BackendUnavailable(
            f"backend 'cupy': loading the kernels failed: {type(e).__name__}: {e}") from e
    return CupyExecution(cp)

"""The CuPy execution: CuPy arrays, cuBLAS GEMMs, the CUDA kernels of ``kernels/``.

CuPy is imported here only, when this backend is asked for. The kernels are compiled once per
process and device with ``cupy.RawModule`` (NVRTC; CuPy's on-disk cache keys on the whole
assembled source, so a second process loads the cubin from disk). ``create()`` raises
:class:`~gpulstm.backends.BackendUnavailable` naming what is missing: CuPy, a CUDA device, or
kernels that compile (with the NVRTC log).

Every GEMM of a module (input projection, the stepwise loop's recurrent products, weight and
input gradients) goes through one call, ``cublasGemmEx`` (:meth:`CupyExecution._gemm_ex`),
whose compute type follows the module's ``allow_tf32``: ``CUBLAS_COMPUTE_32F`` (full float32,
the default) or ``CUBLAS_COMPUTE_32F_FAST_TF32`` (tensor cores round the inputs to TF32 and
accumulate in float32); float64 uses ``CUBLAS_COMPUTE_64F``. CuPy's own ``CUPY_TF32``
setting does not reach these calls, so the flag is the same for the forward and backward
GEMMs.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from . import BackendUnavailable
from .kernel_loop import KernelLoop
from .kernel_pointwise import KernelPointwise
from ..kernel_source import NVRTC_OPTIONS, kernel_source

#: DLPack device types whose memory CuPy can use without a copy (kDLCUDA, kDLCUDAManaged)
_DLPACK_CUDA = (2, 13)

# cuBLAS / CUDA enum values (cublas_api.h, library_types.h)
_OP_N, _OP_T = 0, 1
_R_32F, _R_64F = 0, 1
_COMPUTE_32F, _COMPUTE_32F_FAST_TF32, _COMPUTE_64F = 68, 77, 70
_GEMM_DEFAULT = -1
_POINTER_MODE_HOST = 0


def _blas_operand(a):
    """(op, leading dimension) of a 2-D row-major operand read as column-major storage: a
    C-ordered matrix is its transpose stored column-major (op N on the swapped product), an
    F-ordered one (a transposed view) is itself (op T); None for other layouts."""
    item = a.itemsize
    if a.strides[1] == item and a.strides[0] >= max(1, a.shape[1]) * item:
        return _OP_N, max(1, a.strides[0] // item)
    if a.strides[0] == item and a.strides[1] >= max(1, a.shape[0]) * item:
        return _OP_T, max(1, a.strides[1] // item)
    return None

class PerDevice:
    """One value per (device id, key...), made by ``make(cp, dev, *key)`` on first use and
    kept for the process: the compiled modules, the device limits and the capture streams."""

    __slots__ = ("_make", "_values")

    def __init__(self, make):
        self._make, self._values = make, {}

    def get(self, cp, dev, *key):
        k = (int(dev), *key)
        v = self._values.get(k)
        if v is None:
            v = self._values[k] = self._make(cp, int(dev), *key)
        return v

    def fresh(self):
        """An empty cache with the same maker (tests swap it in)."""
        return PerDevice(self._make)


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


def _compile_module(cp, dev, cooperative):
    src = kernel_source()
    with cp.cuda.Device(dev):
        mod = cp.RawModule(code=src.code, options=NVRTC_OPTIONS,
                           name_expressions=src.name_expressions,
                           enable_cooperative_groups=cooperative)
        mod.compile()  # now, so that errors surface in create() and not at the first step
    return mod


def _device_limits(cp, dev):
    a = cp.cuda.Device(dev).attributes
    return a["MultiProcessorCount"], a["MaxSharedMemoryPerBlockOptin"]


def _capture_stream(cp, dev):
    return cp.cuda.Stream(non_blocking=True)  # called with ``dev`` current


_modules = PerDevice(_compile_module)  # (device, cooperative) -> compiled cupy.RawModule
_limits = PerDevice(_device_limits)  # device -> (SM count, opt-in shared bytes per block)
_capture_streams = PerDevice(_capture_stream)  # device -> the stream graphs are captured on


def compiled_module(cp, device_id=None, cooperative=False):
    """The RawModule of every kernel for ``device_id`` (default: current), compiled once.
    ``cooperative``: the module whose launches are cooperative (``cuLaunchCooperativeKernel``,
    CuPy's ``enable_cooperative_groups``), for the persistent kernels; compiled on first use.

    Raises ``cupy.cuda.compiler.CompileException`` (its text holds the NVRTC log) on failure.
    """
    dev = cp.cuda.runtime.getDevice() if device_id is None else int(device_id)
    return _modules.get(cp, dev, bool(cooperative))


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
        # the opt-in: a kernel's default limit is 48 KiB minus its static shared memory, so a
        # dynamic size under 48 KiB may need it too
        if f.max_dynamic_shared_size_bytes < shared_mem:
            f.max_dynamic_shared_size_bytes = shared_mem
        if not cooperative:
            f(grid, block, args, shared_mem=shared_mem)
            return
        # CuPy shrinks a cooperative grid that does not fit, with a warning, and the kernels'
        # grid barrier would count the shrunk grid (units never computed): an error instead
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                f(grid, block, args, shared_mem=shared_mem)
            except Warning as w:
                raise RuntimeError(f"cooperative launch of {self._name} (grid {grid}, block "
                                   f"{block}, {shared_mem} dynamic shared bytes) refused: "
                                   f"CuPy warned {w}") from None

    def blocks_per_sm(self, threads, shared_mem):
        """Co-resident blocks per SM of the cooperative kernel at ``threads`` threads and
        ``shared_mem`` dynamic bytes (the driver's occupancy calculator, after the opt-in), or
        None where this CuPy does not expose it."""
        occupancy = getattr(getattr(self._cp.cuda, "driver", None),
                            "occupancyMaxActiveBlocksPerMultiprocessor", None)
        if occupancy is None:
            return None
        f = self.prepare(True)
        if f.max_dynamic_shared_size_bytes < shared_mem:
            f.max_dynamic_shared_size_bytes = shared_mem
        return int(occupancy(f.ptr, int(threads), int(shared_mem)))


class CupyExecution(KernelLoop):
    """Execution on CuPy arrays of the current device and stream; the time loop runs as
    chosen by ``algo`` (:mod:`.kernel_loop`)."""

    name = "cupy"

    def __init__(self, cp, cublas=None):
        self.xp = cp
        if cublas is None:  # CuPy's cuBLAS binding (a stand-in in the tests)
            from cupy_backends.cuda.libs import cublas
        self._cublas = cublas
        self._oom = cp.cuda.memory.OutOfMemoryError
        self.pw = KernelPointwise(lambda name: _DeviceKernel(cp, name), cp)

    def device_limits(self):
        """(SM count, opt-in shared bytes per block) of the current device (queried once)."""
        return _limits.get(self.xp, self.xp.cuda.runtime.getDevice())

    def blocks_per_sm(self, kernel, threads, shared):
        """The occupancy guard's count, from the driver (see :class:`_DeviceKernel`)."""
        return kernel.blocks_per_sm(threads, shared) if hasattr(kernel, "blocks_per_sm") else None

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
        stream = _capture_streams.get(cp, cp.cuda.runtime.getDevice())
        stream.__enter__()  # the current stream: RawKernel launches go to it
        stream.begin_capture()  # relaxed mode (CuPy's default)

    def _end_capture(self):
        stream = _capture_streams.get(self.xp, self.xp.cuda.runtime.getDevice())
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

    def _gemm_ex(self, a, b, out, beta):
        """out = a @ b + beta * out for 2-D a [M,K], b [K,N] and a C-ordered out [M,N] of one
        float dtype: one cublasGemmEx on the current stream, in the compute type of
        ``allow_tf32`` (module docstring). Row-major C = A B is column-major C^T = B^T A^T, so
        the operands go in swapped. An operand in neither C nor F order is copied first."""
        cp, blas = self.xp, self._cublas
        if out.dtype not in (np.float32, np.float64) or not a.dtype == b.dtype == out.dtype:
            raise TypeError(f"GEMM operands must share float32 or float64; got {a.dtype}, "
                            f"{b.dtype} -> {out.dtype}")
        if out.strides[1] != out.itemsize:
            raise ValueError("the GEMM's output must have unit column stride")
        M, K = a.shape
        N = b.shape[1]
        if M == 0 or N == 0:
            return
        if K == 0:
            out *= beta
            return
        opa, opb = _blas_operand(a), _blas_operand(b)
        if opa is None:
            a = cp.ascontiguousarray(a)
            opa = _blas_operand(a)
        if opb is None:
            b = cp.ascontiguousarray(b)
            opb = _blas_operand(b)
        f64 = out.dtype == np.float64
        dtype, compute = (_R_64F, _COMPUTE_64F) if f64 else \
            (_R_32F, _COMPUTE_32F_FAST_TF32 if self.allow_tf32 else _COMPUTE_32F)
        scal = np.array([1.0, beta], out.dtype)  # alpha, beta on the host
        handle = cp.cuda.device.get_cublas_handle()
        mode = blas.getPointerMode(handle)
        blas.setPointerMode(handle, _POINTER_MODE_HOST)
        try:
            blas.gemmEx(handle, opb[0], opa[0], N, M, K, scal.ctypes.data, b.data.ptr, dtype,
                        opb[1], a.data.ptr, dtype, opa[1], scal.ctypes.data + scal.itemsize,
                        out.data.ptr, dtype, out.strides[0] // out.itemsize, compute,
                        _GEMM_DEFAULT)
        finally:
            blas.setPointerMode(handle, mode)

    def matmul(self, a, b, out):
        """out = a @ b (2-D: one cuBLAS GEMM in the module's compute type)."""
        if a.ndim == 2 and b.ndim == 2 and out.ndim == 2:
            self._gemm_ex(a, b, out, 0.0)
        else:
            self.xp.matmul(a, b, out=out)

    def matmul_acc(self, a, b, out):
        """out += a @ b, as one cuBLAS GEMM with beta = 1 (no temporary)."""
        self._gemm_ex(a, b, out, 1.0)

    def linear(self, a, b, bias, out):
        """out = a @ b + bias (bias: one row, or None): the bias broadcast into ``out``, then
        one GEMM with beta = 1."""
        if bias is None:
            self._gemm_ex(a, b, out, 0.0)
        else:
            out[...] = bias
            self._gemm_ex(a, b, out, 1.0)

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

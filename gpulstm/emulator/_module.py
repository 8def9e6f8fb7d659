"""``EmulatedModule`` / ``EmulatedKernel``: the CuPy ``RawModule`` / ``RawKernel`` calling
convention, executed on the CPU.

Arguments are checked against the C++ parameter types of the instantiated kernel (the
library exports one type code per parameter), so the mistakes that corrupt a GPU launch
silently (a Python int for an ``int`` parameter, float64 data for a ``float*``, a missing
argument) raise here with the parameter index, expected and received type.
"""
from __future__ import annotations

import ctypes
import operator
import struct
import threading
import weakref

import numpy as np

from . import _build
from ._errors import EmulatorError, UnknownKernelError

# One launch at a time per process: the runtime's scheduler state is per library but
# launches are serialized globally, which also keeps kernels from racing on shared arrays.
_LAUNCH_LOCK = threading.Lock()
_ERRLEN = 1024
_ERRBUF = ctypes.create_string_buffer(_ERRLEN)  # written by a failed launch, under the lock

_CODE_NAMES = {
    "b1": "bool (np.bool_)", "i1": "int8 (np.int8)", "u1": "uint8 (np.uint8)",
    "i2": "int16 (np.int16)", "u2": "uint16 (np.uint16)",
    "i4": "int32 (np.int32)", "u4": "uint32 (np.uint32)",
    "i8": "int64 (np.int64)", "u8": "uint64 (np.uint64)",
    "f4": "float32 (np.float32)", "f8": "float64 (np.float64)",
}
_BYTE_CODES = {"b1", "i1", "u1"}  # interchangeable element types behind a pointer


def _describe(code: str) -> str:
    if code.startswith("P"):
        pointee = code[1:]
        if pointee == "v":
            return "void* (any array)"
        return f"pointer to {_CODE_NAMES.get(pointee, 'a ' + pointee[1:] + '-byte type')} (ndarray)"
    return _CODE_NAMES.get(code, f"a {code[1:]}-byte struct (not passable from Python)")


def _dtype_code(dtype: np.dtype) -> str:
    return f"{dtype.kind}{dtype.itemsize}"


_NUMPY_TYPES = {"b1": np.bool_, "i1": np.int8, "u1": np.uint8, "i2": np.int16,
                "u2": np.uint16, "i4": np.int32, "u4": np.uint32, "i8": np.int64,
                "u8": np.uint64, "f4": np.float32, "f8": np.float64}
# struct format of one 8-byte slot holding a scalar, value in the low bytes
_STRUCT = {"b1": "?7x", "i1": "b7x", "u1": "B7x", "i2": "h6x", "u2": "H6x", "i4": "i4x",
           "u4": "I4x", "i8": "q", "u8": "Q", "f4": "f4x", "f8": "d"}


_ANY_ARRAY, _ARRAY_OF, _SCALAR, _SLOW = range(4)


def _fast_rule(code: str):
    """How _pack_all accepts an argument without further checks: (_ANY_ARRAY, None) for
    void*/struct pointers, (_ARRAY_OF, dtype), (_SCALAR, NumPy scalar type), or (_SLOW, None)
    when only the checking path applies."""
    if code.startswith("P"):
        if code[1] in "vX":
            return _ANY_ARRAY, None
        t = _NUMPY_TYPES.get(code[1:])
        return (_ARRAY_OF, np.dtype(t)) if t else (_SLOW, None)
    t = _NUMPY_TYPES.get(code)
    return (_SCALAR, t) if t else (_SLOW, None)


class EmulatedKernel:
    """A kernel of an :class:`EmulatedModule`; call it like ``cupy.RawKernel``:
    ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, module: "EmulatedModule", name: str, info: _build.KernelInfo):
        self.module = module
        self.name = name
        self.num_params = info.arity
        self.param_types = info.signature  # type code per parameter, e.g. ("Pf4", "i4")
        self._index = info.index
        # Fast path of argument packing: per parameter the exact NumPy type that needs no
        # further check (array dtype / scalar type); anything else goes through _pack.
        self._fast = tuple(_fast_rule(code) for code in info.signature)
        self._format = "<" + "".join("Q" if c.startswith("P") else _STRUCT.get(c, "8x")
                                     for c in info.signature)

    def __repr__(self) -> str:
        return f"<EmulatedKernel {self.name}({', '.join(self.param_types)})>"

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None, cooperative=False):
        """Run the kernel to completion. ``grid``/``block``: tuples of 1-3 positive ints;
        ``args``: tuple of NumPy arrays (passed by data pointer, strides unchecked, as in
        CuPy) and NumPy scalars of the exact C parameter type; ``shared_mem``: bytes of dynamic shared memory; ``stream``
        is accepted for CuPy compatibility and ignored (launches are synchronous).
        ``cooperative``: a cooperative launch (``cuLaunchCooperativeKernel``): every block's
        threads run as fibers and ``gpulstm_emu_grid_sync()`` is a grid-wide barrier."""
        g = _dims(grid, "grid", (2**31 - 1, 65535, 65535))
        b = _dims(block, "block", (1024, 1024, 64))
        if b[0] * b[1] * b[2] > 1024:
            raise ValueError(f"block {tuple(block)} has {b[0] * b[1] * b[2]} threads; "
                             "the maximum is 1024")
        shared_mem = operator.index(shared_mem)
        if shared_mem < 0:
            raise ValueError(f"shared_mem must be >= 0, got {shared_mem}")
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"args must be a tuple of arrays and NumPy scalars, "
                            f"got {type(args).__name__}")
        if len(args) != self.num_params:
            raise TypeError(f"kernel {self.name} takes {self.num_params} arguments "
                            f"({', '.join(map(_describe, self.param_types))}), got {len(args)}")
        packed = self._pack_all(args)
        mode = 2 if cooperative else int(self.module.fibers)  # 2: cuda_on_cpu.h's cooperative
        captured = getattr(_CAPTURE, "launches", None)
        if captured is not None:  # recorded into the graph being captured, not run
            if cooperative:
                raise EmulatorError(f"kernel {self.name}: cooperative launches are not "
                                    "captured into graphs by gpulstm")
            captured.append(_Launch(self, mode, g, b, packed, shared_mem, args))
            return
        self._run(mode, g, b, packed, shared_mem)

    def _run(self, mode, g, b, packed, shared_mem):
        launch = self.module._lib.launch
        with _LAUNCH_LOCK:
            if launch(self._index, mode, *g, *b, packed, shared_mem, _ERRBUF,
                      _ERRLEN):
                message = _ERRBUF.value.decode(errors="replace")
                raise EmulatorError(f"kernel {self.name} grid={g} block={b}: {message}")

    def _pack_all(self, args) -> bytes:
        values = []
        for a, (rule, want) in zip(args, self._fast):
            if rule == _SCALAR and type(a) is want:
                values.append(a)
            elif (rule == _ARRAY_OF and type(a) is np.ndarray and a.dtype == want
                  or rule == _ANY_ARRAY and type(a) is np.ndarray):
                values.append(a.ctypes.data)
            else:
                return b"".join(self._pack(i, a, code)
                                for i, (a, code) in enumerate(zip(args, self.param_types)))
        return struct.pack(self._format, *values)

    def _pack(self, i: int, a, code: str) -> bytes:
        """One 8-byte argument slot: a data pointer or the scalar's bytes, zero padded."""
        where = f"argument {i} of kernel {self.name}"
        if isinstance(a, np.ndarray):
            if not code.startswith("P"):
                raise TypeError(f"{where}: parameter is {_describe(code)}, got an array")
            pointee, got = code[1:], _dtype_code(a.dtype)
            if not (pointee == "v" or pointee.startswith("X") or got == pointee
                    or {got, pointee} <= _BYTE_CODES):
                raise TypeError(f"{where}: parameter is {_describe(code)}, got an array "
                                f"of {a.dtype}")
            return a.ctypes.data.to_bytes(8, "little")
        if isinstance(a, np.generic):
            got = _dtype_code(a.dtype)
            if got not in _CODE_NAMES:
                raise TypeError(f"{where}: NumPy scalar of type {a.dtype} is not supported")
            if code != got:
                raise TypeError(f"{where}: parameter is {_describe(code)}, got "
                                f"{_describe(got)}")
            return a.tobytes().ljust(8, b"\0")
        if isinstance(a, (bool, int, float)):
            raise TypeError(
                f"{where}: got a Python {type(a).__name__} ({a!r}); wrap it in the exact C "
                f"type of the parameter, e.g. np.int32({a!r}) - parameter is "
                f"{_describe(code)}")
        raise TypeError(f"{where}: got {type(a).__name__}; pass NumPy arrays and NumPy "
                        f"scalars (parameter is {_describe(code)})")


def _dims(value, what: str, limits: tuple[int, int, int]) -> tuple[int, int, int]:
    """Validated (x, y, z) of a grid or block given as a tuple of 1-3 ints."""
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        raise TypeError(f"{what} must be a tuple of 1 to 3 ints, got {value!r}")
    dims = []
    for d, limit in zip(value, limits):
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"{what} must be a tuple of 1 to 3 ints, got {value!r}")
        if not 1 <= d <= limit:
            raise ValueError(f"{what} {tuple(value)}: each dimension must be in [1, "
                             f"{limit}], got {int(d)}")
        dims.append(int(d))
    return tuple(dims + [1] * (3 - len(dims)))


class EmulatedModule:
    """CUDA C++ source compiled for the CPU; the emulated counterpart of ``cupy.RawModule``.

    ``code``: complete source (no CUDA headers included); ``name_expressions``: kernels to
    instantiate, e.g. ``"lstm_forward<float>"`` (``extern "C" __global__ void f(`` kernels
    are found without); ``options``: NVRTC-style options (-D/-U/-I used, GPU-only ones
    ignored); ``schedule``: ``"auto"`` (fibers iff the source calls a barrier or warp
    intrinsic), ``"fibers"`` or ``"sequential"``.
    """

    def __init__(self, code: str, *, options=(), name_expressions=None, schedule="auto"):
        if not isinstance(code, str):
            raise TypeError(f"code must be a str of CUDA C++ source, got {type(code).__name__}")
        if schedule not in ("auto", "fibers", "sequential"):
            raise ValueError(f"schedule must be 'auto', 'fibers' or 'sequential', "
                             f"got {schedule!r}")
        names = [_build.check_name_expression(n) for n in (name_expressions or ())]
        names += [n for n in _build.extern_c_kernels(code) if n not in names]
        self.name_expressions = list(dict.fromkeys(names))
        self._lib = _build.load(code, self.name_expressions, options)
        # whether launches run threads as fibers (else: each thread to completion)
        self.fibers = self._lib.fibers if schedule == "auto" else schedule == "fibers"
        self._kernels: dict[str, EmulatedKernel] = {}

    def get_function(self, name: str) -> EmulatedKernel:
        kernel = self._kernels.get(name)
        if kernel is None:
            info = self._lib.kernels.get(name)
            if info is None:
                raise UnknownKernelError(
                    f"no kernel {name!r} in this module; available: "
                    f"{', '.join(self.name_expressions) or '(none)'} (templates must be "
                    "listed in name_expressions, spelled exactly as passed)")
            kernel = self._kernels[name] = EmulatedKernel(self, name, info)
        return kernel


# -- graphs: the emulated counterpart of CUDA stream capture ------------------------------------
_CAPTURE = threading.local()  # .launches: the list being captured on this thread, or None


def _owner(a):
    """The array that owns the memory ``a`` points into (NumPy collapses view chains to it,
    except through a non-array base such as ``as_strided``'s: then ``a`` itself)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class _Launch:
    """One captured launch: the kernel, its launch shape and its packed argument bytes (raw
    pointers, as a CUDA graph node keeps them), with weak references to the arrays those
    pointers point into, so a replay after one of them was freed raises instead of writing
    into freed memory (on a GPU: silent corruption)."""

    __slots__ = ("kernel", "mode", "grid", "block", "packed", "shared_mem", "owners")

    def __init__(self, kernel, mode, grid, block, packed, shared_mem, args):
        self.kernel, self.mode, self.grid, self.block = kernel, mode, grid, block
        self.packed, self.shared_mem = packed, shared_mem
        self.owners = tuple((i, weakref.ref(_owner(a))) for i, a in enumerate(args)
                            if isinstance(a, np.ndarray))

    def run(self):
        for i, ref in self.owners:
            if ref() is None:
                raise EmulatorError(
                    f"graph replay: argument {i} of kernel {self.kernel.name} points into an "
                    "array freed since the capture (a dangling pointer in a CUDA graph)")
        self.kernel._run(self.mode, self.grid, self.block, self.packed, self.shared_mem)


class EmulatedGraph:
    """The launches recorded between :func:`begin_capture` and :func:`end_capture`, in order;
    :meth:`launch` runs exactly them again (the same kernels, launch shapes and argument bytes,
    hence the same pointers), as ``cupy.cuda.Graph.launch`` replays a captured CUDA graph."""

    def __init__(self, launches):
        self._launches = tuple(launches)

    def __len__(self):
        return len(self._launches)

    @property
    def kernels(self):
        """The kernel name of every node, in order."""
        return [l.kernel.name for l in self._launches]

    def launch(self, stream=None):
        """Replay every node in order (``stream`` accepted for CuPy compatibility)."""
        for launch in self._launches:
            launch.run()


def begin_capture():
    """Start capturing on this thread: kernel launches are checked and recorded, not run, until
    :func:`end_capture` (CUDA stream capture: nothing executes during a capture)."""
    if getattr(_CAPTURE, "launches", None) is not None:
        raise EmulatorError("begin_capture: this thread is already capturing")
    _CAPTURE.launches = []


def end_capture():
    """Stop capturing; returns the :class:`EmulatedGraph` of the launches recorded since
    :func:`begin_capture`."""
    launches = getattr(_CAPTURE, "launches", None)
    if launches is None:
        raise EmulatorError("end_capture: this thread is not capturing")
    _CAPTURE.launches = None
    return EmulatedGraph(launches)


def is_capturing():
    return getattr(_CAPTURE, "launches", None) is not None

"""The CPU execution: NumPy arrays, whole-sequence time loops and every GEMM compiled with the
host C++ compiler (``kernels/cpu/sequence.cpp``).

Each layer and direction runs its time loop in one call into a shared library (the engine's
``sequence_forward`` / ``sequence_backward`` hooks): per time step a register-tiled GEMM for
the recurrent product (at H = 32 a BLAS call costs more than the whole step; the loop's
weights are read as the model stores them and packed, transposed, once per call into
contiguous column panels) and one fused,
vectorised pointwise pass (polynomial exp and tanh that the compiler vectorises; libm's
scalar ones would dominate). The whole-sequence GEMMs of the engine (the input projection with
the bias as its initial value, dW = dG^T x read from dG as stored, dx) call the BLAS that
scipy-openblas32 ships (OpenBLAS with per-CPU kernels, DYNAMIC_ARCH), linked at build time
through the Python package: no system BLAS needed. An inference forward
keeps its states in a ring of 2 slots (the engine's ``ring_states``).

What it runs: every LSTM (with or without forget gate, peepholes), GRU and RNN (tanh, relu)
direction, with ``lengths``; an LSTM with ``proj_size`` is declined and runs the engine's
stepwise loop with the NumPy pointwise steps. Results equal the NumPy reference up to rounding
(float64: ~1e-15 relative; tests/test_exec_cpu.py checks 1e-12 and 1e-5 for float32).

Threads: :func:`set_num_threads` (default: OpenMP's, i.e. ``OMP_NUM_THREADS`` or the cores;
threadpoolctl's limits apply too). Batch rows never interact in the recurrence, so the batch
is split into row blocks (multiples of 4 rows) run without any barrier, from ~4e6
multiply-adds per thread (smaller calls lose more to the parallel region than they gain);
the forward of 1-8 rows instead splits the hidden units over the threads (each thread the
four gate slices of its units, one barrier per step). The whole-sequence GEMMs run on the same
OpenMP threads: single-threaded BLAS calls on row blocks fixed by the shape (OpenBLAS's own
pool is set to 1 thread at load, so ``OPENBLAS_NUM_THREADS`` has no effect here and the two
pools never compete). The bits do not depend on the thread count. A fork()ed child runs
single threaded (GNU OpenMP would hang there).

Build: ``$GPULSTM_CXX`` (default g++) with ``-O3 -fopenmp -fno-trapping-math`` and the flags of
the machine's ISA level (:func:`isa_flags`: x86-64-v4/v3/v2/baseline, ARMv8-A; never
``-march=native``)
(no fast-math: NaN and infinities behave; the floating-point exception flags are not kept,
so both arms of a select are computed and blended), cached in ``$GPULSTM_CACHE_DIR/cpu`` (default
``~/.cache/gpulstm/cpu``) under a hash of source, flags, compiler and BLAS, with the trust
rules of :mod:`gpulstm.buildcache` (private directory, digest verified before loading). :func:`create` raises :class:`~gpulstm.backends.BackendUnavailable` with the
compiler log when the build fails.
"""
from __future__ import annotations

import ctypes
import hashlib
import platform
import subprocess
import threading
from pathlib import Path

import numpy as np

from .. import buildcache
from . import BackendUnavailable, numpy_pointwise
from .numpy import HostExecution

SOURCE = Path("cpu") / "sequence.cpp"  # relative to gpulstm.kernel_source.kernel_dir()
FLAGS = ("-std=c++17", "-O3", "-fopenmp", "-fPIC", "-shared",
         "-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math")
_lock = threading.Lock()
_num_threads = 0  # 0: OpenMP's default


def set_num_threads(n):
    """Threads of the compiled time loops and of the whole-sequence GEMMs (0: OpenMP's
    default, ``OMP_NUM_THREADS`` or the cores). Both run on OpenMP's one pool: the BLAS is
    called single threaded on blocks of rows that OpenMP's threads share out (its own pool is
    set to 1 thread when the library loads), so ``OPENBLAS_NUM_THREADS`` changes nothing here
    and nothing is oversubscribed. Returns the previous value."""
    global _num_threads
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"num_threads must be an int >= 0 (0: OpenMP's default); got {n!r}")
    old, _num_threads = _num_threads, int(n)
    return old


def get_num_threads():
    """Threads the compiled loops use now (resolving 0 to OpenMP's default)."""
    return _num_threads or int(_library().max_threads())


def blas_info():
    """The BLAS the library links, as it describes itself (OpenBLAS's configuration string:
    version, DYNAMIC_ARCH, the kernel chosen for this CPU) and its pool's thread count."""
    lib = _library()
    return {"config": lib.blas_config().decode(), "threads": int(lib.blas_get_num_threads())}


# x86-64 micro-architecture levels (the psABI's): the /proc/cpuinfo flags each one needs
_X86_LEVELS = (
    ("-march=x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
    ("-march=x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe"}),
    ("-march=x86-64-v2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
)


def _cpu_flags():
    """The feature flags of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith(("flags", "Features")):
                return set(ln.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_flags(machine=None, cpu_flags=None):
    """The instruction-set flags of the build for this machine: one build per ISA level,
    chosen when the library loads (never ``-march=native``: a result may depend on the level,
    AVX-512 / AVX2+FMA / SSE4.2 / baseline, never on the exact CPU model or its tuning).
    x86-64: the highest psABI level whose flags /proc/cpuinfo lists (x86-64-v4 with AVX-512,
    v3 with AVX2 and FMA, v2, else the x86-64 baseline); aarch64: ARMv8-A (NEON is part of
    it); anything else: the compiler's default."""
    machine = (platform.machine() if machine is None else machine).lower()
    if machine in ("x86_64", "amd64"):
        have = _cpu_flags() if cpu_flags is None else set(cpu_flags)
        for flag, need in _X86_LEVELS:
            if need <= have:
                return (flag, "-mtune=generic")
        return ("-march=x86-64", "-mtune=generic")
    if machine in ("aarch64", "arm64"):
        return ("-march=armv8-a",)
    return ()


_CACHE = buildcache.BuildCache("cpu", "the cpu execution's compile cache", BackendUnavailable)


def _blas():
    """(compile flags, link flags, identity) of the BLAS the library links: scipy-openblas32's
    OpenBLAS (a declared dependency; its headers and library come with the wheel, its
    symbols carry the prefix ``scipy_``)."""
    try:
        import scipy_openblas32 as ob
    except ImportError as e:
        raise BackendUnavailable("backend 'cpu': the BLAS it links, scipy-openblas32, is not "
                                 "installed (pip install scipy-openblas32)") from e
    lib = Path(ob.get_lib_dir())
    return ([f"-I{ob.get_include_dir()}"],
            [f"-L{lib}", f"-l{ob.get_library()}", f"-Wl,-rpath,{lib}"],
            f"scipy-openblas32 {ob.__version__} {lib}")


def build_inputs(src: Path):
    """The files the library of ``src`` is compiled from, all in its cache key: the source and
    the headers it includes (the cells' pointwise math in kernels/cells/, the option flags)."""
    kernels = src.parent.parent
    if not (kernels / "cells").is_dir():  # a source outside the kernels tree (tests)
        return [src]
    return [src, kernels / "kernel_flags.cuh", *sorted((kernels / "cells").glob("*.cuh"))]


def cell_flags():
    """Compiler flags that give the library the generic loops of every cell header in
    kernels/cells/ (``cell_<Struct>_forward_f32`` & co.): each header force-included, their
    structs listed in GL_CELL_STRUCTS (kernels/cpu/sequence.cpp instantiates them)."""
    from ..kernel_source import cell_headers, cell_structs
    structs = " ".join(f"X({name})" for name in cell_structs())
    return ["-DGPULSTM_HD=__attribute__((always_inline)) inline",
            *[f for h in cell_headers() for f in ("-include", str(h))],
            f"-DGL_CELL_STRUCTS(X)={structs}"]


def _build(src: Path) -> Path:
    """The verified library of ``src`` in the cache (gpulstm/buildcache.py: private
    directory, digest checked before loading, compiled once under a lock)."""
    cxx = buildcache.compiler()
    inputs = build_inputs(src)
    text = "\0".join(f.read_text() for f in inputs)
    cells = cell_flags() if len(inputs) > 1 else []  # the kernels' source: every cell's loops
    cflags, ldflags, blas = _blas()
    isa = isa_flags()
    key = hashlib.sha256("\0".join([text, *FLAGS, *isa, *cells,
                                     buildcache.compiler_identity(cxx), blas]).encode()
                         ).hexdigest()[:32]

    def compile(out: Path) -> None:
        cmd = [cxx, *FLAGS, *isa, *cflags, *cells, "-o", str(out), str(src), *ldflags]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise BackendUnavailable(f"backend 'cpu': compiling {src} failed ({' '.join(cmd)}), "
                                     f"exit status {res.returncode}:\n{res.stderr}{res.stdout}")

    return _CACHE.library(f"sequence-{key}.so", compile)


_lib = None
_failure = None  # the BackendUnavailable of a failed build, raised again without rebuilding


def _library():
    global _lib, _failure
    with _lock:
        if _failure is not None:
            raise _failure
        if _lib is None:
            from ..kernel_source import kernel_dir
            try:
                src = kernel_dir() / SOURCE
            except FileNotFoundError as e:
                raise BackendUnavailable(f"backend 'cpu': {e}") from e
            if not src.is_file():
                raise BackendUnavailable(f"backend 'cpu': source {src} not found")
            try:
                lib = _bind(ctypes.CDLL(str(_build(src))))
                lib.blas_set_num_threads(1)  # one pool: OpenMP's shares out the GEMM blocks
                _lib = lib
            except BackendUnavailable as e:
                _failure = e
                raise
            except (OSError, RuntimeError, AttributeError) as e:
                _failure = BackendUnavailable(f"backend 'cpu': building or loading the library "
                                              f"failed: {e}")
                raise _failure from e
        return _lib


# argument kinds: p pointer, i int, l long
_SIGS = {
    "lstm_forward": "iiippippppiipppplpii",
    "lstm_backward": "iiippippppppppiii",
    "gru_forward": "iiippppiipplpi",
    "gru_backward": "iiippippppppi",
    "rnn_forward": "iiipppiippii",
    "rnn_backward": "iiippippppii",
    "gemm": "iiiipliplplpli",
    "transpose": "iiplp",
}
_CELL_SIGS = {"forward": "iiippppiippplpii", "backward": "iiipppippppppppii"}
_CT = {"p": ctypes.c_void_p, "i": ctypes.c_int, "l": ctypes.c_long}


def _bind(dll):
    for name, sig in _SIGS.items():
        for suf in ("f32", "f64"):
            f = getattr(dll, f"{name}_{suf}")
            f.argtypes = [_CT[c] for c in sig]
            f.restype = None
    from ..kernel_source import cell_structs
    for struct in cell_structs():  # the generic loops of every cell header (cell_flags)
        for what, sig in _CELL_SIGS.items():
            for suf in ("f32", "f64"):
                f = getattr(dll, f"cell_{struct}_{what}_{suf}")
                f.argtypes = [_CT[c] for c in sig]
                f.restype = None
    for suf in ("f32", "f64"):
        getattr(dll, f"activations_{suf}").argtypes = [ctypes.c_void_p, ctypes.c_long] + [ctypes.c_void_p] * 3
    dll.max_threads.restype = ctypes.c_int
    dll.last_threads.restype = ctypes.c_int
    dll.tile_rows.restype = ctypes.c_int
    dll.blas_set_num_threads.argtypes = [ctypes.c_int]
    dll.blas_get_num_threads.restype = ctypes.c_int
    dll.blas_config.restype = ctypes.c_char_p
    return dll


_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


_BYTE = ctypes.c_char * 1


def _p(a):
    """Data pointer of a C-contiguous array (checked: the library indexes densely). Through
    the buffer protocol where it can (0.4 us; ``a.ctypes.data`` builds a helper object, 0.8 us,
    a dozen times per call), else ``a.ctypes`` (read-only or empty arrays)."""
    if not a.flags.c_contiguous:
        raise ValueError("the cpu execution needs C-contiguous buffers")
    if a.flags.writeable and a.nbytes:
        return ctypes.addressof(_BYTE.from_buffer(a))
    return a.ctypes.data


def _time_stride(a):
    """Elements between time steps of a [T,B,W] buffer: 0 for the engine's one-slot scratch
    of the inference path (a zero-stride view), else B*W."""
    if a.strides[0] == 0:
        if not a[0].flags.c_contiguous:
            raise ValueError("the cpu execution needs C-contiguous buffers")
        return 0
    _p(a)
    return a.shape[1] * a.shape[2]


def activations(x):
    """(exp, sigmoid, tanh) of a float32/float64 array as the compiled loops compute them."""
    x = np.ascontiguousarray(x)
    out = [np.empty_like(x) for _ in range(3)]
    getattr(_library(), f"activations_{_SUFFIX[x.dtype]}")(_p(x), x.size, *(_p(o) for o in out))
    return tuple(out)


_INT, _OUT, _IN, _GATES, _STRIDE, _DB, _INPUT, _KONST, _OPT = range(9)
_SCALARS = ("T", "B", "H", "reverse", "slots", "flags", "threads", "window")
_SPECIAL = {"gates": _GATES, "gates_stride": _STRIDE, "db": _DB, "input": _INPUT,
            "konst": _KONST, "C": _OPT, "dc": _OPT}
_compiled_specs = {}


def _compiled(cell, spec):
    """``spec`` (a cell's ``cpu_*_args``) as (code, name) pairs, once per cell class and spec:
    the per-call binding then does no string matching."""
    key = (type(cell), spec)
    out = _compiled_specs.get(key)
    if out is None:
        inputs = {"w_hh", "L", *cell.kernel_constants(1)}
        out = _compiled_specs[key] = tuple(
            (_INT if n in _SCALARS else _SPECIAL.get(n, _IN if n in inputs else _OUT), n)
            for n in spec)
    return out


def _operand(a, step):
    """(transposed, leading dimension) of a 2-D GEMM operand as the BLAS reads it: row-major
    with unit column stride, or a transposed view of one (unit row stride); (0, None) for
    any other layout. A dimension of extent 1 (or 0) may have any stride."""
    rows, cols = a.shape
    s0, s1 = a.strides
    if s1 == step or cols <= 1:
        if s0 % step == 0 and (rows <= 1 or s0 >= step * cols):
            return 0, max(s0 // step, cols, 1) if rows > 1 else max(cols, 1)
    if s0 == step or rows <= 1:
        if s1 % step == 0 and (cols <= 1 or s1 >= step * rows):
            return 1, max(s1 // step, rows, 1) if cols > 1 else max(rows, 1)
    return 0, None


class CpuExecution(HostExecution):
    """The NumPy execution plus whole-sequence compiled time loops."""

    ring_states = True  # an inference forward keeps its states in a ring of 2 slots (engine)
    stored_weights = True  # the loops pack W_hh (and W_ih) transposed from the model's layout
    #: a loop over part of a direction (a recompute segment) gives the bits of those steps of
    #: one loop over the whole (engine: one call per direction or segment, not per window;
    #: tests/test_recompute.py checks it)
    forward_segment_exact = backward_segment_exact = True

    def __init__(self, lib):
        super().__init__("cpu", numpy_pointwise)
        self._lib = lib

    def _gemm(self, a, b, out, accumulate, c0=None):
        """out (+)= a @ b through the library's BLAS call when all three are 2-D, of one float
        dtype, ``out`` row-contiguous, ``a`` and ``b`` each row- or column-contiguous (a
        transposed view); False otherwise (the caller then uses NumPy's)."""
        suf = _SUFFIX.get(out.dtype)
        if (suf is None or a.ndim != 2 or b.ndim != 2 or out.ndim != 2
                or not a.dtype == b.dtype == out.dtype
                or a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1])):
            return False
        step = out.itemsize
        ta, lda = _operand(a, step)
        tb, ldb = _operand(b, step)
        tc, ldc = _operand(out, step)
        if lda is None or ldb is None or ldc is None or tc:
            return False
        M, K = a.shape
        N = b.shape[1]
        if c0 is not None:  # one row (the bias), broadcast: row stride 0
            c0, ld0 = c0.ctypes.data, 0
        else:
            c0, ld0 = (out.ctypes.data if accumulate else None), ldc
        getattr(self._lib, f"gemm_{suf}")(M, K, N, ta, a.ctypes.data, lda, tb, b.ctypes.data,
                                          ldb, c0, ld0, out.ctypes.data, ldc, _num_threads)
        return True

    def matmul(self, a, b, out):
        if not self._gemm(a, b, out, False):
            np.matmul(a, b, out=out)

    def matmul_acc(self, a, b, out):
        if not self._gemm(a, b, out, True):
            out += a @ b

    def linear(self, a, b, bias, out):
        """out = a @ b + bias: the bias row is the GEMM's initial value (no second pass)."""
        if bias is None:
            return self.matmul(a, b, out)
        if not (bias.ndim == 1 and bias.dtype == out.dtype and bias.strides[0] == bias.itemsize
                and bias.shape[0] == out.shape[-1] and self._gemm(a, b, out, False, c0=bias)):
            np.matmul(a, b, out=out)
            out += bias

    def transposed(self, a):
        """A C-contiguous copy of a.T (2-D float), by the library's blocked transpose."""
        suf = _SUFFIX.get(a.dtype)
        if suf is None or a.ndim != 2 or a.strides[1] != a.itemsize or a.strides[0] % a.itemsize:
            return np.ascontiguousarray(a.T)
        out = np.empty(a.shape[::-1], a.dtype)
        rows, cols = a.shape
        getattr(self._lib, f"transpose_{suf}")(rows, cols, a.ctypes.data,
                                               a.strides[0] // a.itemsize, out.ctypes.data)
        return out

    def _fn(self, cell, what, dtype):
        """The compiled loop of ``cell``: its own (``cell.cpu_loop``: lstm, gru, rnn) or the
        generic one of its header's struct (``cell_<Struct>_...``); None for other dtypes."""
        suf = _SUFFIX.get(np.dtype(dtype))
        if suf is None:
            return None
        prefix = cell.cpu_loop or f"cell_{cell.kernel_struct}"
        return getattr(self._lib, f"{prefix}_{what}_{suf}")

    def projects_input(self, cell, s, flags):
        """True where the cell's compiled forward projects the input itself, a chunk of time
        steps at a time (the engine then allocates no [T,B,G*H] projection): the LSTM's."""
        return (cell.loop_projects_input and cell.kernels_apply(flags)
                and s["x"].dtype in _SUFFIX and s["S"].dtype == s["x"].dtype)

    def _args(self, cell, spec, a, ints):
        """The loop's arguments the cell declares (:class:`gpulstm.cells.Cell`,
        ``cpu_forward_args``): ints, pointers to C-contiguous buffers of ``a``. Returns (args,
        arrays): the contiguous copies made on the way must stay alive through the call."""
        dt = a["S"].dtype
        keep = []
        out = []
        for code, name in _compiled(cell, spec):
            if code == _INT:
                out.append(int(ints[name]))
            elif code == _OUT:  # written (or large): must be C-contiguous as it is
                out.append(_p(a[name]))
            elif code == _IN:  # read only: a contiguous copy where it is not
                x = np.ascontiguousarray(a[name], dtype=np.int32 if name == "L" else dt)
                keep.append(x)
                out.append(_p(x))
            elif code == _GATES:  # the inference path's one slot has time stride 0
                g = a["gates"]
                out.append(None if g is None else g.ctypes.data if g.strides[0] == 0 else _p(g))
            elif code == _STRIDE:
                out.append(0 if a["gates"] is None else _time_stride(a["gates"]))
            elif code == _KONST:  # the cell's constants (kernel_constant), or none
                k = a.get(cell.kernel_constant) if cell.kernel_constant else None
                if k is not None:
                    k = np.ascontiguousarray(k, dtype=dt)
                    keep.append(k)
                out.append(None if k is None else _p(k))
            elif code == _OPT:  # a buffer only some cells have (C, dc): null without it
                out.append(None if a.get(name) is None else _p(a[name]))
            elif code == _DB:
                out.append(None if a.get("db") is None else _p(a["db"]))
            else:  # _INPUT
                gx = a.get("gx")
                if gx is not None:
                    out += [_p(gx), None, 0, None, None]
                    continue
                # x, W_ih as stored and the bias: the loop projects the input itself
                x, wih, bias = np.ascontiguousarray(a["x"]), np.ascontiguousarray(a["w_ih"], dt), a["bias"]
                if bias is not None:
                    bias = np.ascontiguousarray(bias, dtype=dt)
                keep += [x, wih, bias]
                out += [None, _p(x), x.shape[2], _p(wih), None if bias is None else _p(bias)]
        return out, keep

    def sequence_forward(self, cell, w, s, flags):
        if not (cell.cpu_forward_args and cell.kernels_apply(flags)):
            return False  # e.g. LSTM projection: the stepwise loop (BLAS GEMMs, NumPy pointwise)
        S, Y = s["S"], s["Y"]
        f = self._fn(cell, "forward", S.dtype)
        if f is None:
            return False
        T, B, H = Y.shape
        a = dict(s, w_hh=w["w_hh"], w_ih=w["w_ih"])  # the weights as stored: the loops pack W^T
        ints = dict(T=T, B=B, H=H, reverse=s["reverse"], slots=S.shape[0], flags=flags,
                    threads=_num_threads)  # slots: T + 1, or the inference ring's 2
        args, keep = self._args(cell, cell.cpu_forward_args, a, ints)
        f(*args)
        del keep
        return True

    def sequence_backward(self, cell, w, s, g, flags):
        if not (cell.cpu_backward_args and cell.kernels_apply(flags)):
            return False
        S, dY = s["S"], g["dY"]
        f = self._fn(cell, "backward", S.dtype)
        if f is None:
            return False
        T, B, H = dY.shape
        a = dict(s, **g)
        a["w_hh"] = w["w_hh"]
        a["db"] = None
        window = int(g.get("window") or T)
        if "db" in cell.cpu_backward_args and w["b_ih"] is not None:
            # the bias gradient, summed per window of the engine while each step's dG is in
            # cache (engine: g["db"], [windows, G*H])
            a["db"] = np.empty((-(-T // window), g["dGx"].shape[2]), S.dtype)
        ints = dict(T=T, B=B, H=H, reverse=s["reverse"], flags=flags, threads=_num_threads,
                    window=window)
        args, keep = self._args(cell, cell.cpu_backward_args, a, ints)
        f(*args)
        del keep
        if a["db"] is not None:
            g["db"] = a["db"]
        return True


def create():
    return CpuExecution(_library())

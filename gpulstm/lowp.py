"""bfloat16 storage with float32 compute (the mixed precision of torch autocast).

With ``dtype="bfloat16"`` the weights, inputs, outputs, saved states and gates, and the
per-step gradient buffers are ``ml_dtypes.bfloat16`` NumPy arrays; every GEMM and every
pointwise step widens its bf16 operands to float32, computes in float32 and rounds once (to
nearest, ties to even) when it stores its result. Sums over time and batch (bias and
peephole gradients) accumulate in float32 and are rounded once. Weight gradients are
returned in the parameter dtype (bf16), as torch's autograd returns a bf16 parameter's
``.grad``: each is one float32-accumulated GEMM or sum, rounded once.

The engine runs a bf16 forward or backward on :class:`StorageExecution`, a view of the
execution (:func:`execution_for`): it runs the engine's stepwise loop (the cpu execution's
compiled loop and the persistent kernels are float32/float64 only; an execution with
``bf16_loops``, emulated, runs its fused bf16 kernels), its GEMMs are the
execution's own float32 GEMMs on widened copies (a block at a time: :data:`CHUNK`), and its
pointwise steps are the execution's bf16 kernels where it has them (``emulated``: the stepwise
kernels compiled for ``gl_bf16`` storage with float compute, kernels/gpulstm_common.cuh), else
the reference's (:mod:`gpulstm.backends.numpy_pointwise`) on widened copies, written back
rounded (``numpy``, ``cpu``). Executions without bf16 support (``cupy``: CuPy has no bf16
arrays, its GEMMs would need cuBLAS's bf16 path) are refused with one ValueError naming
those that have it.

Nothing here changes a float32 or float64 run: every helper returns its argument as it is for
those dtypes.
"""
from __future__ import annotations

import functools
import inspect
import sys

import numpy as np

BF16_NAME = "bfloat16"
F32 = np.dtype(np.float32)
#: elements of the float32 block a bf16 GEMM widens at a time (1 MiB; see StorageExecution)
CHUNK = 1 << 18


def bfloat16():
    """The NumPy dtype of ``ml_dtypes.bfloat16`` (imported on first use). Raises TypeError
    naming the package where it is not installed."""
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise TypeError("dtype 'bfloat16' needs the ml_dtypes package (pip install ml_dtypes), "
                        "which is not installed") from e
    return np.dtype(ml_dtypes.bfloat16)


_BF16 = None  # ml_dtypes.bfloat16's dtype, once ml_dtypes is imported (it takes ~0.5 s)


def _isbf(dt):
    """``dt`` (a dtype) is bfloat16: a kind check first (the float dtypes stop there, at C
    speed), then one comparison with the cached dtype (``dtype.name`` is a Python property,
    ~1 us: a per-step cost on the bf16 path)."""
    global _BF16
    if dt.kind != "V":
        return False
    if _BF16 is None:
        m = sys.modules.get("ml_dtypes")
        if m is None:
            return False
        _BF16 = np.dtype(m.bfloat16)
    return dt == _BF16


def is_bf16(dtype):
    """True for the bfloat16 dtype (``ml_dtypes.bfloat16``; nothing is imported for the
    other dtypes)."""
    try:
        return _isbf(np.dtype(dtype))
    except TypeError:
        return False


def compute_dtype(dtype):
    """The dtype arithmetic runs in for storage ``dtype``: float32 for bfloat16, else
    ``dtype`` itself."""
    return F32 if is_bf16(dtype) else np.dtype(dtype)


def widen(a):
    """``a`` as float32 (a new array) when it is bfloat16; anything else as it is (the same
    object: a float32 or float64 caller's bits and buffers are untouched)."""
    dt = getattr(a, "dtype", None)
    if dt is not None and _isbf(dt):
        return a.astype(F32)
    return a


def store(a, dtype):
    """``a`` rounded to storage ``dtype`` (nearest, ties to even: ml_dtypes' conversion);
    ``a`` itself when it has that dtype already."""
    dtype = np.dtype(dtype)
    return a if a.dtype == dtype else a.astype(dtype)


def total(a, axis):
    """``a.sum(axis)`` accumulated in float32 for bfloat16 ``a`` and rounded once (NumPy's
    own bf16 sum would round after every addition); plain ``a.sum(axis)`` otherwise."""
    if _isbf(a.dtype):
        return a.sum(axis=axis, dtype=F32).astype(a.dtype)
    return a.sum(axis=axis)


#: the arguments each reference pointwise step writes (in/out ones included), by the names of
#: :mod:`gpulstm.backends.numpy_pointwise`'s signatures: copied back, rounded, after the step
WRITES = {
    "lstm_forward": ("gates", "c_next", "h_next", "y"),
    "lstm_backward": ("dh_next", "dgates", "dc_next"),
    "lstm_proj_forward": ("h_next", "y"),
    "lstm_proj_backward": ("dh_next", "dhr"),
    "gru_forward": ("gates", "h_next", "y"),
    "gru_backward": ("dh_next", "dgx", "dgh"),
    "rnn_forward": ("h_next", "y"),
    "rnn_backward": ("dh_next", "dgates"),
}


class WidenedPointwise:
    """The pointwise steps of ``base`` (a module of float32/float64 steps with the reference's
    signatures) for bf16 buffers: each call widens every bf16 array argument to a float32
    copy (one copy per distinct array object, so an argument passed twice stays one buffer),
    runs the float32 step, and writes the arguments the step writes (:data:`WRITES`) back,
    rounded once. Calls without bf16 arguments go to ``base`` as they are."""

    def __init__(self, base):
        self.base = base
        self._fns = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        fn = self._fns.get(name)
        if fn is None:
            fn = self._fns[name] = self._wrap(name, getattr(self.base, name))
        return fn

    @staticmethod
    def _wrap(name, f):
        if name not in WRITES:
            return f
        params = list(inspect.signature(f).parameters)
        writes = tuple(params.index(p) for p in WRITES[name])

        def step(*args):
            copies = {}
            wide = []
            for a in args:
                dt = getattr(a, "dtype", None)
                if dt is not None and _isbf(dt):
                    c = copies.get(id(a))
                    if c is None:
                        c = copies[id(a)] = (a, a.astype(F32))
                    wide.append(c[1])
                else:
                    wide.append(a)
            if not copies:
                return f(*args)
            f(*wide)
            done = set()
            for i in writes:
                a = args[i]
                if id(a) in copies and id(a) not in done:
                    done.add(id(a))
                    a[...] = copies[id(a)][1]  # rounded to nearest even by ml_dtypes
        step.__name__ = name
        step.__doc__ = f.__doc__
        return step


#: attributes of the base execution a bf16 view does not show: the compiled / kernel time
#: loops (float32/float64 only, unless the base says ``bf16_loops``), so the engine runs its
#: stepwise loop
_LOOPS = frozenset({"sequence_forward", "sequence_backward"})
_HIDDEN = frozenset({"sequence_forward", "sequence_backward", "projects_input", "stored_weights",
                     "ring_states", "with_graphs"})


class StorageExecution:
    """A host execution with bfloat16 storage and float32 compute (see the module's
    docstring). Everything not defined here is the base execution's."""

    def __init__(self, base):
        self.base = base
        # an execution with bf16 kernels (emulated: kernels/gpulstm_common.cuh's gl_bf16) runs
        # its own pointwise steps on the bf16 buffers; the others the float32 steps on copies
        self.pw = base.pw if getattr(base, "bf16_kernels", False) else WidenedPointwise(base.pw)

    def __getattr__(self, name):
        if name in _LOOPS and getattr(self.base, "bf16_loops", False):
            # the base's bf16 time loop (emulated: the fused kernels), run with this view as
            # self: the GEMMs it calls (dL/dh_0) are this view's, widened
            return functools.partial(getattr(type(self.base), name), self)
        if name in _HIDDEN:
            raise AttributeError(name)
        return getattr(self.base, name)

    def _gemm(self, a, b, out, accumulate, bias=None):
        """out (+)= a @ b (+ bias) in float32, rounded once into ``out``, by the base
        execution's float32 GEMMs on widened copies taken a block at a time: a float32
        temporary holds at most about CHUNK elements beyond the weights, so a whole-sequence
        GEMM (the input projection, dW = dG^T x, dx) never widens a whole [T*B, *] operand (it
        would double the bf16 peak). A reduction over T*B (the weight gradients) is split along
        its inner dimension and accumulated in one float32 result; the others by row blocks."""
        base = self.base
        M, K = a.shape
        N = b.shape[1]
        if K > M and K * max(M, N) > CHUNK:  # dW = dG^T x: blocks of the T*B reduction
            step = max(1, CHUNK // max(M, N, 1))
            acc = widen(out) if accumulate else None
            for k0 in range(0, K, step):
                wa, wb = widen(a[:, k0:k0 + step]), widen(b[k0:k0 + step])
                if acc is None:
                    acc = np.empty((M, N), F32)
                    base.matmul(wa, wb, out=acc)
                else:
                    base.matmul_acc(wa, wb, out=acc)
            if bias is not None:
                acc += widen(bias)
            out[...] = acc
            return
        wb = widen(b)
        wbias = None if bias is None else widen(bias)
        step = max(1, CHUNK // max(K, N, 1)) if M * max(K, N) > CHUNK else max(M, 1)
        for m0 in range(0, M, step):
            rows = slice(m0, m0 + step)
            wa = widen(a[rows])
            if accumulate:
                tmp = out[rows].astype(F32)
                base.matmul_acc(wa, wb, out=tmp)
            else:
                tmp = np.empty((wa.shape[0], N), F32)
                if wbias is None:
                    base.matmul(wa, wb, out=tmp)
                else:
                    base.linear(wa, wb, wbias, out=tmp)
            out[rows] = tmp

    def matmul(self, a, b, out):
        self._gemm(a, b, out, False)

    def matmul_acc(self, a, b, out):
        self._gemm(a, b, out, True)

    def linear(self, a, b, bias, out):
        self._gemm(a, b, out, False, bias)

    def dropout_mask(self, shape, p, seed, offset, dtype):
        """The float32 keep mask of the Philox stream (the same bits on every execution),
        rounded once to ``dtype`` (its scale 1 / (1 - p) to the nearest bf16)."""
        if not is_bf16(dtype):
            return self.base.dropout_mask(shape, p, seed, offset, dtype)
        return store(self.base.dropout_mask(shape, p, seed, offset, F32), dtype)

    def __repr__(self):
        return f"<gpulstm execution {self.base.name!r}, bfloat16 storage>"


def supports_bf16(ex):
    """Whether execution ``ex`` runs ``dtype='bfloat16'`` (its ``bf16_storage`` flag)."""
    return bool(getattr(ex, "bf16_storage", False))


def bf16_backends():
    """Names of the backends whose executions run bfloat16."""
    return ("numpy", "cpu", "emulated")


def check_execution(ex, dtype):
    """ValueError unless ``ex`` can run ``dtype`` (only bfloat16 is limited); what a face
    calls when it is built, before any parameter is made."""
    if is_bf16(dtype) and not isinstance(ex, StorageExecution) and not supports_bf16(ex):
        raise ValueError(
            f"dtype='bfloat16' runs on the backends {', '.join(map(repr, bf16_backends()))} "
            f"(bf16 storage, float32 compute); backend {getattr(ex, 'name', ex)!r} has no "
            f"bfloat16 kernels: use one of those, or dtype='float32'")


def execution_for(ex, dtype):
    """The execution the engine runs for storage ``dtype``: ``ex`` itself for float32 and
    float64; for bfloat16 its :class:`StorageExecution` view (ValueError where ``ex`` has no
    bfloat16 support, see :func:`check_execution`)."""
    if not is_bf16(dtype) or isinstance(ex, StorageExecution):
        return ex
    check_execution(ex, dtype)
    return StorageExecution(ex)

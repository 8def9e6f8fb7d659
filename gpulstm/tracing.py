"""What a forward/backward issues on the GPU, computed on any backend: :func:`launch_trace`.

The trace replays the module's forward (and backward) through the engine with a *tracing
execution*: the cupy execution's time-loop rules (:mod:`gpulstm.backends.kernel_loop`, the
module's ``algo``) on NumPy arrays whose contents are never computed. Every CUDA kernel of
``kernels/`` the cupy execution would launch is recorded with its grid, block and dynamic
shared bytes (not run); every GEMM (``ex.matmul``, ``ex.matmul_acc`` and the engine's
whole-sequence ``@`` products: cuBLAS calls on cupy) with its (m, n, k); every other array
operation CuPy would run as a kernel of its own (elementwise ops, reductions, copies) as an
``"op"``. Each entry says whether it sits inside a time loop (``in_loop``). Array sizes,
not values, decide every launch, so the trace is exact for the kernels and GEMMs; the
``"op"`` entries follow NumPy's ufunc calls, which CuPy mirrors one for one.

    >>> import numpy as np, gpulstm as gl
    >>> m = gl.LSTM(4, 8, backend="numpy")
    >>> tr = gl.launch_trace(m, np.zeros((5, 2, 4), np.float32), algo="fused")
    >>> tr.count(kind="kernel", in_loop=True)  # 5 steps forward, 5 backward
    10
    >>> tr.count(kind="gemm", in_loop=True)
    0
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import engine
from .backends.kernel_loop import KernelLoop, check_algo
from .backends.kernel_pointwise import KernelPointwise
from .backends.numpy import HostExecution


class Call(NamedTuple):
    kind: str  # "kernel" (ours), "gemm" (cuBLAS), "op" (another CuPy kernel), "graph" (replay),
    # "fallback" (a persistent launch the occupancy guard refused: fused launches follow)
    name: str  # kernel name expression, "gemm", the NumPy/CuPy operation, or a graph's kernel
    phase: str  # "forward" or "backward"
    in_loop: bool  # issued by a time step (inside a time loop)
    grid: tuple = None  # kernels: (x, y, z)
    block: tuple = None
    shared_mem: int = 0  # dynamic shared bytes of the launch
    shape: tuple = None  # gemm: (m, n, k); op: the output shape; graph: (kernel nodes,)
    cooperative: bool = False  # kernels: a cooperative launch (grid-wide barriers inside)
    tf32: bool = False  # gemm: cuBLAS may round the float32 inputs to TF32 (allow_tf32)


class LaunchTrace:
    """The calls of one traced forward (and backward), in issue order (``calls``). With
    ``graphs``: the calls of a call after the first (the loops' graphs captured, replayed)."""

    def __init__(self, calls, T, B, algo, graphs=False):
        self.calls, self.T, self.B, self.algo, self.graphs = calls, T, B, algo, graphs

    def count(self, **where):
        """Number of calls whose fields equal ``where`` (e.g. ``kind="gemm", in_loop=True``)."""
        return sum(all(getattr(c, k) == v for k, v in where.items()) for c in self.calls)

    def summary(self):
        """{(phase, kind, in_loop): count}."""
        out = {}
        for c in self.calls:
            key = (c.phase, c.kind, c.in_loop)
            out[key] = out.get(key, 0) + 1
        return out

    def __str__(self):
        lines = [f"launch trace: T={self.T} B={self.B} algo={self.algo}"
                 f"{' with CUDA graphs (replays)' if self.graphs else ''}, {len(self.calls)} calls"]
        for (phase, kind, loop), n in sorted(self.summary().items()):
            lines.append(f"  {phase:8s} {kind:6s} {'in loop' if loop else 'outside':8s} {n:6d}"
                         + (f"  ({n / self.T:.2f} per step)" if loop else ""))
        return "\n".join(lines)


class _Recorder:
    def __init__(self):
        self.calls, self.phase, self.in_loop = [], "forward", False
        self.tf32 = False  # the module's allow_tf32
        self.capturing = None  # the calls of the graph being captured, or None

    def gemm(self, m, n, k, dtype):
        self.add("gemm", "gemm", shape=(m, n, k), tf32=self.tf32 and dtype == np.float32)

    def add(self, kind, name, **kw):
        call = Call(kind, name, self.phase, self.in_loop, **kw)
        (self.calls if self.capturing is None else self.capturing).append(call)


class _Graph:
    """A captured graph of the trace: its kernel calls (recorded, not issued)."""

    def __init__(self, calls):
        self.calls = calls


def _dims(d):
    d = tuple(int(v) for v in d)
    return d + (1,) * (3 - len(d))


class _Array(np.ndarray):
    """NumPy array whose products and ufuncs are recorded, not computed."""

    rec = None  # the active _Recorder (set per trace)

    def __matmul__(self, other):
        a, b = np.asarray(self), np.asarray(other)
        self.rec.gemm(a.shape[0], b.shape[-1], a.shape[-1], np.result_type(a, b))
        return np.empty(a.shape[:-1] + b.shape[-1:], np.result_type(a, b)).view(_Array)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        args = [np.asarray(x) if isinstance(x, np.ndarray) else x for x in inputs]
        if out is not None:
            kw["out"] = tuple(np.asarray(o) for o in out)
        res = getattr(ufunc, method)(*args, **kw)
        shape = np.shape(res)
        self.rec.add("op", ufunc.__name__ + ("" if method == "__call__" else "." + method),
                     shape=shape)
        return res.view(_Array) if isinstance(res, np.ndarray) else res


class _XP:
    """The array module of the tracing execution: NumPy, arrays created as :class:`_Array`,
    copies recorded as ops."""

    def __init__(self, rec):
        self._rec = rec

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, shape, dtype=float):
        return np.empty(shape, dtype).view(_Array)

    def zeros(self, shape, dtype=float):
        self._rec.add("op", "zeros", shape=tuple(np.atleast_1d(shape)))
        return np.zeros(shape, dtype).view(_Array)

    def _copying(name):
        def f(self, *a, **kw):
            res = getattr(np, name)(*[np.asarray(x) if isinstance(x, np.ndarray) else
                                      ([np.asarray(y) for y in x] if isinstance(x, (list, tuple)) else x)
                                      for x in a], **kw)
            self._rec.add("op", name, shape=res.shape)
            return res.view(_Array)
        return f

    stack = _copying("stack")
    concatenate = _copying("concatenate")

    def ascontiguousarray(self, a, dtype=None):
        a = np.asarray(a)
        if not a.flags.c_contiguous or (dtype is not None and np.dtype(dtype) != a.dtype):
            self._rec.add("op", "copy", shape=a.shape)
        return np.ascontiguousarray(a, dtype).view(_Array)


class _TracingExecution(KernelLoop, HostExecution):
    """The cupy execution's decisions, on uncomputed NumPy arrays, recorded."""

    def __init__(self, algo):
        self.rec = _Recorder()
        self.algo = algo
        HostExecution.__init__(self, "trace", KernelPointwise(self._launcher, np))
        self.xp = _XP(self.rec)

    def _launcher(self, name_expression):
        def launch(grid, block, args, shared_mem=0, cooperative=False):
            self.rec.add("kernel", name_expression, grid=_dims(grid), block=_dims(block),
                         shared_mem=int(shared_mem), cooperative=cooperative)
        return launch

    def asarray(self, a, dtype):
        return np.ascontiguousarray(a, dtype=dtype).view(_Array)

    def _fallback(self, name, plan, per_sm):
        """The occupancy guard refused persistent kernel ``name``: a ``kind="fallback"`` call
        (the launch that would not be co-resident), then the fused launches."""
        self.rec.add("fallback", name, grid=_dims(plan["grid"]), block=_dims(plan["block"]),
                     shared_mem=int(plan["shared"]), cooperative=True)

    def matmul(self, a, b, out):
        self.rec.gemm(a.shape[0], b.shape[1], a.shape[1], a.dtype)

    matmul_acc = matmul

    def _loop(self, steps):
        for st in steps:
            self.rec.in_loop = True
            yield st
        self.rec.in_loop = False

    # graphs: a capture records the launches into the graph; a replay is one "graph" call
    def _begin_capture(self):
        self.rec.capturing = []

    def _end_capture(self):
        graph, self.rec.capturing = _Graph(self.rec.capturing), None
        return graph

    def _launch_graph(self, graph):
        first = graph.calls[0]
        self.rec.add("graph", first.name, grid=first.grid, block=first.block,
                     shared_mem=first.shared_mem, shape=(len(graph.calls),))

    def _copy_in(self, dst, src):
        self.rec.add("op", "arena_copy", shape=tuple(np.shape(dst)))


class _LoopCell:
    """A cell whose step methods mark their calls as inside the time loop."""

    def __init__(self, cell, rec):
        self._cell, self._rec = cell, rec

    def __getattr__(self, name):
        return getattr(self._cell, name)

    def _in_loop(self, step, *a):
        self._rec.in_loop = True
        try:
            step(*a)
        finally:
            self._rec.in_loop = False

    def step_forward(self, *a):
        self._in_loop(self._cell.step_forward, *a)

    def step_backward(self, *a):
        self._in_loop(self._cell.step_backward, *a)


def launch_trace(module, x, backward=True, algo=None, graphs=None):
    """The kernel launches and cuBLAS calls a forward (and, with ``backward``, a backward) of
    ``module`` on input ``x`` ([T, B, I], or [B, T, I] with ``batch_first``) issues on the
    cupy backend, with the module's ``algo`` (or ``algo`` given here) and its ``cuda_graphs``
    (or ``graphs`` given here); each GEMM says whether it may use TF32 (the module's
    ``allow_tf32``, float32 only). Computed on any backend without running anything on a GPU
    and without touching the module's state. Returns a :class:`LaunchTrace`.

    With graphs, the trace is that of a call after the first of its shape: each fused loop is
    one ``kind="graph"`` call per direction and phase (``shape`` = its kernel nodes), after the
    copies into its arena (``"op"`` calls named ``"arena_copy"``); the first call also captures
    the graphs (T launches recorded per loop, none issued) before replaying them."""
    algo = check_algo(module.algo if algo is None else algo)
    graphs = getattr(module, "cuda_graphs", False) if graphs is None else graphs
    if not isinstance(graphs, (bool, np.bool_)):
        raise TypeError(f"graphs must be a bool or None; got {type(graphs).__name__}")
    shape = np.shape(x)
    if len(shape) != 3:
        raise ValueError(f"x must have 3 dimensions ([T, B, I] or [B, T, I]); got shape {shape}")
    T, B = (shape[1], shape[0]) if module.batch_first else (shape[0], shape[1])
    ex = _TracingExecution(algo)
    ex._simulated = getattr(module.ex, "_simulated", None)  # with_device_limits: the guard too
    ex.rec.tf32 = module.allow_tf32
    if graphs:
        ex = ex.with_graphs(True)
    _Array.rec = ex.rec
    dt = module.dtype
    to_np = module.ex.to_numpy
    params = [[{k: (None if v is None else ex.asarray(to_np(v), dt)) for k, v in w.items()}
               for w in dirs] for dirs in module._weights()]
    cell = _LoopCell(module._make_cell(), ex.rec)
    LD, Hs, H = module.num_layers * module.num_directions, module._state_size, module.hidden_size
    xs = np.zeros((T, B, module.input_size), dt).view(_Array)
    h0 = np.zeros((LD, B, Hs), dt).view(_Array)
    c0 = np.zeros((LD, B, H), dt).view(_Array) if cell.has_cell_state else None
    lengths = np.full(B, T, np.int32).view(_Array)
    def run():
        ex.rec.calls, ex.rec.phase = [], "forward"
        y, _, _, ctx = engine.forward(ex, cell, params, xs, h0, c0, lengths,
                                      module.dropout if module.training else 0.0,
                                      engine.DropoutStream(0))
        if backward:
            ex.rec.phase = "backward"
            engine.backward(ex, ctx, np.zeros(y.shape, dt).view(_Array))

    try:
        with np.errstate(all="ignore"):
            if graphs:
                run()  # the first call captures; its arenas are free again once it returns
            run()
    finally:
        _Array.rec = None
    return LaunchTrace(ex.rec.calls, T, B, algo, bool(graphs))

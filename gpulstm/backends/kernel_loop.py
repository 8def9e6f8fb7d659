"""The time loop on the device: the ``sequence_forward`` / ``sequence_backward`` hooks of the
kernel-backed executions (``cupy`` and ``emulated``), see :mod:`gpulstm.engine`.

Algorithms (module option ``algo``; ``docs/gpu.md`` has the details):

``"stepwise"``
    the engine's Python loop: per step one GEMM (cuBLAS on ``cupy``) and one pointwise kernel
    forward, one pointwise kernel and one accumulating GEMM backward. The hooks decline.
``"fused"``
    one launch per time step forward and one backward (``kernels/fused_step.cu``): a block
    owns a tile of hidden units (all their gates) and of batch rows, computes its part of the
    recurrent product and applies the pointwise step. No GEMM inside the loop; backward adds
    one GEMM after it (dL/dh_0 = dh + dG_0 W_hh).
``"persistent"``
    the whole sequence of one direction in ONE cooperative launch forward and one backward
    (``kernels/persistent.cu``): each block loops over the steps itself, one grid-wide
    barrier per step. Blocks own fewer units than the fused kernels' (so the grid spreads over
    the SMs) and split the reduction over more threads; each block's slice of W_hh stays
    resident in shared memory when it fits (:func:`persistent_plan`). Needs every block
    co-resident (one block per SM): where the grid is larger than the device's SM count it
    runs fused instead.
``"auto"``
    ``"persistent"`` for a small batch (``B <= PERSISTENT_MAX_BATCH``) whose grid fits on the
    SMs, else ``"fused"``; ``"stepwise"`` where neither applies. The rule follows the shape of
    PyTorch's choice of cuDNN's persistent algorithms (``get_algo`` in
    aten/src/ATen/native/cudnn/RNN.cpp: persistent kernels for small batches whose weights fit
    on chip); its thresholds are modelled (``gpulstm.perfmodel``), not measured.

LSTM with ``proj_size`` always runs stepwise (the projection GEMM sits between two steps);
so does a backward that records per-step state gradients (the engine asks no hook then).

CUDA graphs (execution option ``graphs``, :meth:`KernelLoop.with_graphs`; module option
``cuda_graphs``): the fused loop of a direction is captured once per shape into a graph on a
fixed buffer arena (:mod:`.graphs`) and replayed afterwards: one graph launch per direction and
phase instead of T kernel launches. The execution supplies three primitives,
``_begin_capture()``, ``_end_capture() -> graph`` and ``_launch_graph(graph)`` (CuPy stream
capture, or the emulator's recorded launches); everything else is shared here. The stepwise
loop (a cuBLAS GEMM per step, which CuPy cannot capture) and the persistent kernels (one
cooperative launch already) are not captured.

Both executions launch the same kernels with the same grid, block and arguments; only the
launcher differs (``cupy.RawModule`` or :class:`gpulstm.emulator.EmulatedModule`).
"""
from __future__ import annotations

import copy
import weakref

import numpy as np

from .graphs import Arena, GraphPool, Lease, leased_numpy
from .options import ExecutionOptions

#: maximum units per block (blockDim.x; the fused kernels' tile), maximum batch rows per block
#: (blockDim.y) and maximum threads per block; must match FUSED_TILE / FUSED_ROWS /
#: FUSED_THREADS in kernels/fused_step.cu
TILE = 32
ROWS = 8
THREADS = 256
#: unit tiles the persistent plan tries, smallest first (more blocks keep more SMs busy)
PERSISTENT_UNITS = (8, 16, 32)
ALGOS = ("auto", "stepwise", "fused", "persistent")
#: device assumed where none is queried (emulated execution, launch trace, performance model):
#: an H100 SXM / H200 (132 SMs, 227 KiB of shared memory per block with the opt-in)
SM_COUNT = 132
SMEM_PER_BLOCK = 227 * 1024
#: largest batch the "auto" rule sends to the persistent kernel
PERSISTENT_MAX_BATCH = 32

_i32 = np.int32


def check_algo(algo):
    """``algo`` validated: one of :data:`ALGOS`."""
    if not isinstance(algo, str):
        raise TypeError(f"algo must be a str, one of {ALGOS}; got {type(algo).__name__}")
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; expected one of {ALGOS}")
    return algo


def fused_launch_shape(B, H):
    """(grid, block) of every fused step launch for batch ``B`` and hidden size ``H``."""
    rows = min(ROWS, B)
    return ((H + TILE - 1) // TILE, (B + rows - 1) // rows), (TILE, rows)


def resident_ld(gates, units):
    """Row length (elements) of a persistent block's resident weight copy: ``gates * units``
    rounded up to an odd multiple of ``units`` (below 32 units), so that the rows one warp's
    reduction slices read start on distinct banks (``gl_resident_ld`` in kernels/persistent.cu,
    which says why)."""
    return (gates + 1) * units if units < 32 and gates % 2 == 0 else gates * units


def persistent_plan(B, H, gates, itemsize, sm_count=SM_COUNT, smem_per_block=SMEM_PER_BLOCK):
    """Launch plan of a persistent kernel, or None where its grid cannot be co-resident.

    Returns dict(grid, block, blocks, resident, shared). Blocks of U units x R rows x Z
    reduction slices (``R = min(8, B)``, ``Z = min(32, 256 // (U R))``) with the smallest U in
    :data:`PERSISTENT_UNITS` whose grid ``ceil(H / U) x ceil(B / R)`` fits on the SMs, so the
    work spreads over as many SMs as possible. ``resident``: the block's weight slice (about
    ``gates * H * U`` elements, rows padded: :func:`resident_ld`) fits in shared memory next
    to the static buffers; ``shared`` the dynamic shared bytes (the slice, or 0).
    Co-residency is argued for ONE block per SM: a block has at most 256 threads and the
    kernels' registers (ptxas report, tests/test_nvrtc_compile.py) times 256 stay under an
    SM's 64 Ki, so any SM holds one; ``blocks <= sm_count`` is then sufficient. Before each
    launch the occupancy guard checks it again on the device (``KernelLoop._co_resident``).
    """
    rows = min(ROWS, B)
    row_groups = -(-B // rows)
    for units in PERSISTENT_UNITS:
        if -(-H // units) * row_groups <= sm_count:
            break
    else:
        return None
    grid = (-(-H // units), row_groups)
    block = (units, rows, max(1, min(TILE, THREADS // (units * rows))))
    # the slice: forward H rows of resident_ld(G, U), backward G H rows of resident_ld(1, U)
    w_bytes = max(H * resident_ld(gates, units), gates * H * resident_ld(1, units)) * itemsize
    static = (ROWS * (TILE + 1) + 4 * THREADS) * itemsize  # FusedShared<T>
    resident = w_bytes + static <= smem_per_block
    return dict(grid=grid, block=block, blocks=grid[0] * grid[1], resident=resident,
                shared=w_bytes if resident else 0)


def _check_int_index(name, B, H):
    """The fused and persistent kernels index [B, 4H] rows and the [4H, H] weights with int."""
    if 4 * B * H >= 2**31:
        raise ValueError(f"{name}: B * H = {B} * {H} is too large for the kernels' int "
                         f"indexing (4 * B * H must be < 2**31)")
    if 4 * H * H >= 2**31:
        raise ValueError(f"{name}: H = {H} is too large for the kernels' int weight index "
                         f"(4 * H * H must be < 2**31, H <= 23170); use algo='stepwise'")


#: the int scalars of a kernel argument list that change with the step
_STEP_INTS = ("t", "has")


#: buffers of the kernels' argument lists that a cell may not have (passed as a placeholder)
_OPTIONAL = ("C", "dc", "gates", "konst", "w_hh_T")


def binder(spec, a, ints, cell):
    """The kernel arguments ``cell`` declares (:class:`gpulstm.cells.Cell`, e.g.
    ``fused_forward_args``), resolved once per direction: a buffer of ``a`` by name,
    ``"name@slot"`` its time slot, ``konst`` the cell's ``kernel_constant``, an int scalar of
    ``ints`` (or of the step: ``t``, ``has``) as int32. A buffer of ``_OPTIONAL`` the cell does
    not have is an empty array of the state's dtype (a valid pointer its kernels never read).
    Returns ``args(at)``: the argument tuple of one step, ``at`` giving the slots (``t``,
    ``prev``, ``nxt``, ``last``) and the step's scalars; a step then only indexes."""
    absent = a["S"].reshape(-1)[:0]
    parts = []  # (None, fixed value) | (slot, buffer) | (scalar name, None)
    for name in spec:
        if name in _STEP_INTS:
            parts.append((name, None))
        elif name in ints:
            parts.append((None, _i32(ints[name])))
        else:
            buf, _, slot = name.partition("@")
            key = cell.kernel_constant if buf == "konst" else buf
            value = a.get(key) if buf in _OPTIONAL else a[buf]
            if value is None:
                parts.append((None, absent))
            else:
                parts.append((slot or None, value))

    def args(at):
        return tuple(v if k is None else (_i32(at[k]) if v is None else v[at[k]])
                     for k, v in parts)
    return args


def _steps(T, reverse):
    """(t, prev, nxt) in processing order: the engine's slot convention (see gpulstm.cells)."""
    if reverse:
        return [(t, t + 1, t) for t in range(T - 1, -1, -1)]
    return [(t, t, t + 1) for t in range(T)]


class KernelLoop(ExecutionOptions):
    """Mixin of an execution whose ``pw`` is a :class:`~.kernel_pointwise.KernelPointwise`:
    adds the algorithm choice, the device time loop and the dropout masks drawn on the
    device (:meth:`dropout_mask`). ``algo`` is a class default;
    :meth:`with_algo` returns a copy of the execution with another one."""

    algo = "auto"
    #: the engine's windows (gpulstm.engine, "Recompute"): the forward kernels read each
    #: step's state from memory, so a forward over part of a direction gives those steps'
    #: bits (one call per direction or recompute segment); a backward's last step adds
    #: dG W_hh by a GEMM where a longer loop's kernel adds it itself, so the engine runs the
    #: backward window by window, with or without recompute, on windows of ``window_rows``
    #: rows (large: one launch of a persistent kernel per window)
    forward_segment_exact = True
    backward_segment_exact = False
    window_rows = 65536
    bf16_storage = False  # the kernels read float32/float64 (gpulstm.lowp refuses bfloat16)
    #: capture the fused loop into CUDA graphs (:meth:`with_graphs`)
    graphs = False
    _graph_pool = None

    def dropout_mask(self, shape, p, seed, offset, dtype):
        """The scaled dropout keep mask of ``shape`` for probability ``p`` from the Philox
        stream (seed, offset), written on the device by ``kernels/dropout.cu`` (the same bits
        as :func:`gpulstm.backends.philox.dropout_mask` on the host executions)."""
        mask = self.xp.empty(tuple(shape), dtype)
        self.pw.dropout_mask(mask, p, seed, offset)
        return mask

    def with_algo(self, algo):
        """This execution with time-loop algorithm ``algo`` (a shallow copy sharing the
        compiled kernels; the same object for the current algorithm)."""
        algo = check_algo(algo)
        if algo == self.algo:
            return self
        ex = copy.copy(self)
        ex.algo = algo
        return ex

    def with_graphs(self, flag=True, per_shape=None, max_free=None):
        """This execution with the fused loop captured into CUDA graphs (``flag``) or not: a
        shallow copy sharing the compiled kernels, with a pool of buffer arenas of its own
        (:class:`~.graphs.GraphPool`; ``per_shape`` / ``max_free`` bound it). The same object
        when ``flag`` is False and graphs are already off."""
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"graphs must be a bool; got {type(flag).__name__} {flag!r}")
        if not flag:
            if not self.graphs:
                return self
            ex = copy.copy(self)
            ex.graphs, ex._graph_pool = False, None
            return ex
        if self.algo == "stepwise":
            raise ValueError("CUDA graphs capture the fused time loop; algo='stepwise' issues a "
                             "cuBLAS GEMM per step, which CuPy cannot capture (use algo='auto' "
                             "or 'fused')")
        if type(self)._begin_capture is KernelLoop._begin_capture:
            raise ValueError(f"execution {getattr(self, 'name', type(self).__name__)!r} cannot "
                             "capture graphs")
        ex = copy.copy(self)
        ex.graphs = True
        ex._graph_pool = GraphPool(**{k: v for k, v in (("per_shape", per_shape),
                                                        ("max_free", max_free)) if v is not None})
        return ex

    @property
    def graph_pool(self):
        """The :class:`~.graphs.GraphPool` of this execution (None without graphs): its
        arenas, capture and replay counts (``stats()``)."""
        return self._graph_pool

    # -- the primitives an execution supplies for graphs (see the module docstring) -----------
    def _begin_capture(self):
        raise NotImplementedError

    def _end_capture(self):
        raise NotImplementedError

    def _launch_graph(self, graph):
        raise NotImplementedError

    def _graph_scope(self):
        """What else an arena is keyed by (cupy: the device and the stream it replays on)."""
        return ()

    def _leased(self, a, lease):
        """A view of arena array ``a`` that keeps ``lease`` alive (NumPy arrays here)."""
        return leased_numpy(a, lease)

    def _copy_in(self, dst, src):
        """dst[...] = src on the device (into an arena, before a replay)."""
        self.xp.copyto(dst, src)

    def device_limits(self):
        """(SM count, shared bytes per block) of the device the persistent kernels run on."""
        return SM_COUNT, SMEM_PER_BLOCK

    #: simulated device limits (:meth:`with_device_limits`); None: the device's own
    _simulated = None

    def with_device_limits(self, sm_count=None, smem_per_block=None, smem_per_sm=None):
        """This execution as if on a device with ``sm_count`` SMs, ``smem_per_block`` shared
        bytes per block (with the opt-in) and ``smem_per_sm`` shared bytes per SM (a shallow
        copy; None keeps the device's). The persistent plan, the occupancy guard before each
        cooperative launch and its fallback to fused follow them: how CI tests the guard."""
        sim = {}
        for key, v in (("sm_count", sm_count), ("smem_per_block", smem_per_block),
                       ("smem_per_sm", smem_per_sm)):
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                    raise ValueError(f"{key} must be a positive int or None; got {v!r}")
                sim[key] = int(v)
        ex = copy.copy(self)
        ex._simulated = sim or None
        return ex

    def _limits(self):
        """(SM count, shared bytes per block): the device's, or the simulated ones."""
        sm, smem = self.device_limits()
        sim = self._simulated or {}
        return sim.get("sm_count", sm), sim.get("smem_per_block", smem)

    def blocks_per_sm(self, kernel, threads, shared):
        """Blocks of ``kernel`` (``threads`` threads, ``shared`` dynamic shared bytes) one SM
        holds at once, or None where unknown (then one is assumed: the compile-time argument of
        :func:`persistent_plan`). The cupy execution asks the driver's occupancy calculator."""
        return None

    def _co_resident(self, k, plan, itemsize):
        """(fits, blocks per SM): the occupancy guard of a cooperative launch, blocks per SM x
        SMs >= grid (with simulated limits: also the simulated shared memory per SM)."""
        threads = int(np.prod(plan["block"]))
        per_sm = self.blocks_per_sm(k, threads, plan["shared"])
        per_sm = 1 if per_sm is None else int(per_sm)
        sim = self._simulated or {}
        if "smem_per_sm" in sim:
            static = (ROWS * (TILE + 1) + 4 * THREADS) * itemsize  # FusedShared<T>
            per_sm = min(per_sm, sim["smem_per_sm"] // (plan["shared"] + static))
        return per_sm * self._limits()[0] >= plan["blocks"], per_sm

    def _fallback(self, name, plan, per_sm):
        """A persistent launch that would not be co-resident runs fused instead (a hook: the
        GPU check records it)."""

    def loop_algo(self, cell, flags, T, B, H, itemsize):
        """The algorithm the hooks run: "stepwise", "fused" or "persistent" (see the module
        docstring for the rule). The persistent kernels index whole [T, B, 4H] sequences with
        int, so they also need ``T * 4 * B * H < 2**31``."""
        if self.algo == "stepwise" or not cell.kernels_apply(flags):
            return "stepwise"
        if self.algo == "auto" and 4 * H * H >= 2**31:
            return "stepwise"  # past the fused kernels' int weight index (_check_int_index)
        if itemsize == 2:  # bfloat16 storage: fused kernels only (kernel_source.BF16_LOOP_KERNELS)
            return "fused"
        if self.algo in ("auto", "persistent") and T * 4 * B * H < 2**31:
            fits = persistent_plan(B, H, cell.gates, itemsize, *self._limits()) is not None
            if fits and (self.algo == "persistent" or B <= PERSISTENT_MAX_BATCH):
                return "persistent"
        return "fused"

    def _persistent(self, cell, kernel, dtype, B, H):
        """The launcher of persistent kernel ``kernel`` ("persistent_forward" / "_backward")
        of ``cell``, or None where the occupancy guard finds its grid not co-resident (the
        caller runs fused)."""
        k = self._loop_kernel(cell, kernel, dtype, B, H)
        itemsize = np.dtype(dtype).itemsize
        plan = persistent_plan(B, H, cell.gates, itemsize, *self._limits())
        fits, per_sm = self._co_resident(k, plan, itemsize)
        if not fits:
            self._fallback(f"{kernel}<{cell.kernel_struct}>", plan, per_sm)
            return None

        def launch(args):
            barrier = self.xp.zeros(1, np.uint32)
            k(plan["grid"], plan["block"], args + (_i32(plan["resident"]), barrier),
              shared_mem=plan["shared"], cooperative=True)
        return launch

    def _loop(self, steps):
        """The steps of one direction, in order (a hook: the launch trace marks them)."""
        return steps

    def _loop_kernel(self, cell, kernel, dtype, B, H):
        """Time-loop kernel ``kernel`` instantiated for ``cell``'s struct, after the int-index
        size check of the shape."""
        _check_int_index(f"{kernel}<{cell.kernel_struct}>", B, H)
        return self.pw.kernel(kernel, dtype, cell.kernel_struct)

    def _fused(self, cell, kernel, dtype, B, H):
        """The fused kernel ``kernel`` ("fused_forward" / "_backward") of ``cell`` and its
        launch shape."""
        return self._loop_kernel(cell, kernel, dtype, B, H), fused_launch_shape(B, H)

    def _forward_algo(self, cell, s, flags, T, B, H):
        algo = self.loop_algo(cell, flags, T, B, H, s["S"].dtype.itemsize)
        if algo == "persistent" and s["gates"] is not None and s["gates"].strides[0] == 0:
            algo = "fused"  # inference: one gate slot for all steps, which only fused indexes
        return algo

    def sequence_forward(self, cell, w, s, flags):
        lease = s.get("graph_lease")
        if lease is not None and "gx" not in s:  # projects_input took an arena
            self._graph_forward(cell, s, flags, lease)
            return True
        S, gx = s["S"], s["gx"]
        T, B, _ = gx.shape
        H = S.shape[2]
        algo = self._forward_algo(cell, s, flags, T, B, H)
        if algo == "stepwise":
            return False
        launch = (self._persistent(cell, "persistent_forward", S.dtype, B, H)
                  if algo == "persistent" else None)
        if launch is not None:
            ints = dict(T=T, B=B, H=H, flags=flags, reverse=s["reverse"])
            launch(binder(cell.persistent_forward_args, s, ints, cell)({}))
            return True
        k, (grid, block) = self._fused(cell, "fused_forward", S.dtype, B, H)
        self._fused_forward_steps(k, grid, block, cell, T, B, H, flags, s["reverse"], s)
        return True

    def _fused_forward_steps(self, k, grid, block, cell, T, B, H, flags, reverse, a):
        """The T launches of the fused forward on the buffers of ``a`` (the saved dict, or an
        arena's arrays under the same names)."""
        args = binder(cell.fused_forward_args, a, dict(B=B, H=H, flags=flags), cell)
        for t, prev, nxt in self._loop(_steps(T, reverse)):
            k(grid, block, args({"t": t, "prev": prev, "nxt": nxt}))

    def sequence_backward(self, cell, w, s, g, flags):
        S, dY = s["S"], g["dY"]
        T, B, H = dY.shape
        algo = self.loop_algo(cell, flags, T, B, H, S.dtype.itemsize)
        if algo == "stepwise":
            return False
        launch = (self._persistent(cell, "persistent_backward", S.dtype, B, H)
                  if algo == "persistent" else None)
        if launch is not None:
            a = dict(s, **g)
            a["w_hh"] = w["w_hh"]
            ints = dict(T=T, B=B, H=H, flags=flags, reverse=s["reverse"])
            launch(binder(cell.persistent_backward_args, a, ints, cell)({}))
            first = T - 1 if s["reverse"] else 0  # the step processed last
            if cell.dense_recurrence:
                self.matmul_acc(g["dGh"][first], w["w_hh"], out=g["dh"])  # dL/dh_0
            return True
        lease = s.get("graph_lease")
        if lease is not None and self.graphs and self._graph_backward(cell, w, s, g, flags, lease):
            return True
        k, (grid, block) = self._fused(cell, "fused_backward", S.dtype, B, H)
        a = dict(s, **g)
        a["w_hh"] = w["w_hh"]
        last = self._fused_backward_steps(k, grid, block, cell, T, B, H, flags, s["reverse"], a)
        if cell.dense_recurrence:  # dL/dh_0: the first step's term
            self.matmul_acc(g["dGh"][last], w["w_hh"], out=g["dh"])
        return True

    def _fused_backward_steps(self, k, grid, block, cell, T, B, H, flags, reverse, a):
        """The T launches of the fused backward on the buffers of ``a`` (saved and gradient
        dicts with ``w_hh``, or an arena's arrays); returns the step processed last."""
        args = binder(cell.fused_backward_args, a, dict(B=B, H=H, flags=flags), cell)
        last = None  # the step processed before this one
        for t, prev, nxt in self._loop(_steps(T, reverse)[::-1]):
            k(grid, block, args({"t": t, "prev": prev, "nxt": nxt, "has": last is not None,
                                 "last": t if last is None else last}))
            last = t
        return last

    # -- CUDA graphs of the fused loop (module docstring; gpulstm.backends.graphs) -------------
    def projects_input(self, cell, s, flags):
        """The engine's hook (gpulstm.engine): True where this direction's fused loop runs as a
        graph on an arena, whose input projection ``sequence_forward`` then writes straight into
        the arena's ``gx`` (no copy). Takes the arena here (a lease in ``s["graph_lease"]``);
        False without graphs, for another algorithm, or when every arena of the shape is in
        use (the ordinary fused loop then runs)."""
        if not self.graphs or not cell.dense_recurrence:  # the arenas hold a dense W_hh
            return False
        S, gates = s["S"], s["gates"]
        T, B, _ = s["x"].shape
        H = S.shape[2]
        if self._forward_algo(cell, s, flags, T, B, H) != "fused":
            return False
        struct = cell.kernel_struct
        self._fused(cell, "fused_forward", S.dtype, B, H)  # the size check, before allocating
        inference = gates is not None and gates.strides[0] == 0
        width = 0 if gates is None else gates.shape[2]
        GH = s["w_hh_T"].shape[1]
        key = (struct, S.dtype.name, T, B, H, bool(s["reverse"]), int(flags), inference) \
            + tuple(self._graph_scope())
        lease = self._graph_pool.acquire(
            key, lambda: self._new_arena(key, cell, S.dtype, T, B, H, GH, width, inference))
        if lease is None:
            return False
        s["graph_lease"] = lease
        return True

    def _new_arena(self, key, cell, dt, T, B, H, GH, width, inference):
        """The forward buffers of one loop shape, named as in the saved dict (the gradient
        buffers come with the first backward)."""
        e = self.xp.empty
        a = dict(gx=e((T, B, GH), dt), w_hh_T=e((H, GH), dt), S=e((T + 1, B, H), dt),
                 L=e((B,), np.int32), gh=e((B, GH), dt), Y=e((T, B, H), dt), gates=None)
        if cell.carried_state:
            a[cell.carried_state] = e((T + 1, B, H), dt)
        for name, shape in cell.kernel_constants(H).items():
            a[name] = e(shape, dt)
        if width and inference:  # one gate slot, time stride 0, as the engine's
            slot = a["gates_slot"] = e((1, B, width), dt)
            a["gates"] = self.xp.lib.stride_tricks.as_strided(
                slot, (T, B, width), (0,) + tuple(slot.strides[1:]))
        elif width:
            a["gates"] = e((T, B, width), dt)
        return Arena(key, a)

    def _capture(self, k, launches):
        """The graph of the launches ``launches()`` makes (nothing runs while capturing)."""
        prepare = getattr(k, "prepare", None)
        if prepare is not None:
            prepare()  # load the kernel for this device now: never inside a capture
        self._begin_capture()
        try:
            launches()
        except BaseException:
            self._end_capture()  # end the capture, drop its graph
            raise
        return self._end_capture()

    def _graph_forward(self, cell, s, flags, lease):
        """One direction's forward as a graph replay on the leased arena: the input projection
        into its gx (a GEMM, outside the graph), the inputs copied in, the graph (captured on
        this arena's first forward), then the arena's S, carried state (LSTM: C), gates and Y
        handed to ``s``."""
        arena = lease.arena
        a = arena.arrays
        x = s["x"]
        T, B, I = x.shape
        H, GH = a["S"].shape[2], a["gx"].shape[2]
        self.linear(x.reshape(T * B, I), s["w_ih_T"], s["bias"], out=a["gx"].reshape(T * B, GH))
        first = T if s["reverse"] else 0
        self._copy_in(a["w_hh_T"], s["w_hh_T"])
        self._copy_in(a["L"], s["L"])
        self._copy_in(a["S"][first], s["S"][first])
        carried = cell.carried_state
        if carried:
            self._copy_in(a[carried][first], s[carried][first])
        for name in cell.kernel_constants(H):
            self._copy_in(a[name], s[name])
        self._replay(arena, "forward", cell, a["S"].dtype, B, H,
                     lambda k, grid, block: self._fused_forward_steps(
                         k, grid, block, cell, T, B, H, flags, s["reverse"], a))
        for name in ("S", carried, "gates", "Y"):
            if name and a.get(name) is not None:
                s[name] = self._leased(a[name], lease)

    def _replay(self, arena, phase, cell, dtype, B, H, steps):
        """Launch the arena's graph of ``phase`` ("forward" / "backward"), capturing it first
        from ``steps(kernel, grid, block)`` (the fused loop's launches) on first use."""
        pool = self._graph_pool
        graph = arena.graphs.get(phase)
        if graph is None:
            k, (grid, block) = self._fused(cell, f"fused_{phase}", dtype, B, H)
            graph = self._capture(k, lambda: steps(k, grid, block))
            arena.graphs[phase] = graph
            pool.captures[phase] += 1
        self._launch_graph(graph)
        pool.replays[phase] += 1

    def _graph_backward(self, cell, w, s, g, flags, lease):
        """One direction's backward as a graph replay on the arena of its forward: dY, dh, the
        carried gradient (LSTM: dc), W_hh (and L, the cell's constants) copied in, the graph (captured on this arena's first backward),
        the dL/dh_0 GEMM (outside the graph), the arena's gradient buffers handed to ``g``.
        False (the ordinary fused loop runs) while an earlier backward's gradients handed out
        from this arena are still alive."""
        arena, pool = lease.arena, self._graph_pool
        if arena.lease is None or arena.lease() is not lease or not arena.grads_free():
            pool.exhausted += 1
            return False
        a = arena.arrays
        T, B, H = g["dY"].shape
        GH, dt = a["gx"].shape[2], a["S"].dtype
        if "dGx" not in a:
            e = self.xp.empty
            a.update(dY=e((T, B, H), dt), dh=e((B, H), dt), dGx=e((T, B, GH), dt),
                     w_hh=e((GH, H), dt))
            a["dGh"] = e((T, B, GH), dt) if cell.split_dgh else a["dGx"]
            if cell.carried_grad:
                a[cell.carried_grad] = e((B, H), dt)
        self._copy_in(a["w_hh"], w["w_hh"])
        self._copy_in(a["L"], s["L"])
        self._copy_in(a["dY"], g["dY"])
        self._copy_in(a["dh"], g["dh"])
        if cell.carried_grad:
            self._copy_in(a[cell.carried_grad], g[cell.carried_grad])
        for name in cell.kernel_constants(H):
            self._copy_in(a[name], s[name])
        self._replay(arena, "backward", cell, dt, B, H,
                     lambda k, grid, block: self._fused_backward_steps(
                         k, grid, block, cell, T, B, H, flags, s["reverse"], a))
        last = T - 1 if s["reverse"] else 0  # the step processed last
        self.matmul_acc(a["dGh"][last], a["w_hh"], out=a["dh"])  # dL/dh_0
        glease = Lease(arena)
        arena.grad_lease = weakref.ref(glease)
        g["dGx"] = self._leased(a["dGx"], glease)
        g["dGh"] = g["dGx"] if a["dGh"] is a["dGx"] else self._leased(a["dGh"], glease)
        g["dh"] = self._leased(a["dh"], glease)
        if cell.carried_grad:
            g[cell.carried_grad] = self._leased(a[cell.carried_grad], glease)
        return True

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

Both executions launch the same kernels with the same grid, block and arguments; only the
launcher differs (``cupy.RawModule`` or :class:`gpulstm.emulator.EmulatedModule`).
"""
from __future__ import annotations

import copy

import numpy as np

from .numpy_pointwise import LSTM_PROJ
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


def persistent_plan(B, H, gates, itemsize, sm_count=SM_COUNT, smem_per_block=SMEM_PER_BLOCK):
    """Launch plan of a persistent kernel, or None where its grid cannot be co-resident.

    Returns dict(grid, block, blocks, resident, shared). Blocks of U units x R rows x Z
    reduction slices (``R = min(8, B)``, ``Z = min(32, 256 // (U R))``) with the smallest U in
    :data:`PERSISTENT_UNITS` whose grid ``ceil(H / U) x ceil(B / R)`` fits on the SMs, so the
    work spreads over as many SMs as possible. ``resident``: the block's weight slice (about
    ``gates * H * U`` elements, rows padded) fits in shared memory next to the static
    buffers; ``shared``
    the dynamic shared bytes (the slice, or 0). Co-residency is argued for ONE block per SM: a
    block has at most 256 threads and the kernels' registers (ptxas report,
    tests/test_nvrtc_compile.py) times 256 stay under an SM's 64 Ki, so any SM holds one;
    ``blocks <= sm_count`` is then sufficient (a cooperative launch checks it again).
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
    # the slice, rows padded by one element: forward H x (G U + 1), backward G H x (U + 1)
    w_bytes = max(H * (gates * units + 1), gates * H * (units + 1)) * itemsize
    static = (ROWS * (TILE + 1) + 4 * THREADS) * itemsize  # FusedShared<T>
    resident = w_bytes + static <= smem_per_block
    return dict(grid=grid, block=block, blocks=grid[0] * grid[1], resident=resident,
                shared=w_bytes if resident else 0)


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

    def device_limits(self):
        """(SM count, shared bytes per block) of the device the persistent kernels run on."""
        return SM_COUNT, SMEM_PER_BLOCK

    def loop_algo(self, cell, flags, T, B, H, itemsize):
        """The algorithm the hooks run: "stepwise", "fused" or "persistent" (see the module
        docstring for the rule). The persistent kernels index whole [T, B, 4H] sequences with
        int, so they also need ``T * 4 * B * H < 2**31``."""
        if self.algo == "stepwise" or (cell.has_cell_state and flags & LSTM_PROJ):
            return "stepwise"
        if self.algo in ("auto", "persistent") and T * 4 * B * H < 2**31:
            fits = persistent_plan(B, H, cell.gates, itemsize, *self.device_limits()) is not None
            if fits and (self.algo == "persistent" or B <= PERSISTENT_MAX_BATCH):
                return "persistent"
        return "fused"

    def _persistent(self, name, dtype, B, H, gates):
        if 4 * B * H >= 2**31:
            raise ValueError(f"{name}: B * H = {B} * {H} is too large for the kernels' int "
                             f"indexing (4 * B * H must be < 2**31)")
        plan = persistent_plan(B, H, gates, np.dtype(dtype).itemsize, *self.device_limits())
        k = self.pw.kernel(name, dtype)

        def launch(args):
            barrier = self.xp.zeros(1, np.uint32)
            k(plan["grid"], plan["block"], args + (_i32(plan["resident"]), barrier),
              shared_mem=plan["shared"], cooperative=True)
        return launch

    def _loop(self, steps):
        """The steps of one direction, in order (a hook: the launch trace marks them)."""
        return steps

    def _fused(self, name, dtype, B, H):
        if 4 * B * H >= 2**31:
            raise ValueError(f"{name}: B * H = {B} * {H} is too large for the kernels' int "
                             f"indexing (4 * B * H must be < 2**31)")
        return self.pw.kernel(name, dtype), fused_launch_shape(B, H)

    def sequence_forward(self, cell, w, s, flags):
        S, gx, L, Y = s["S"], s["gx"], s["L"], s["Y"]
        T, B, _ = gx.shape
        H = S.shape[2]
        algo = self.loop_algo(cell, flags, T, B, H, S.dtype.itemsize)
        if algo == "stepwise":
            return False
        if algo == "persistent" and s["gates"] is not None and s["gates"].strides[0] == 0:
            algo = "fused"  # inference: one gate slot for all steps, which only fused indexes
        kind = cell.kind
        if algo == "persistent":
            launch = self._persistent(kind + "_persistent_forward", S.dtype, B, H, cell.gates)
            n, rev = _i32(T), _i32(s["reverse"])
            if kind == "lstm":
                launch((gx, s["w_hh_T"], s["C"], S, L, n, rev, s["peep"], s["gh"], s["gates"], Y,
                        _i32(B), _i32(H), _i32(flags)))
            elif kind == "gru":
                launch((gx, s["w_hh_T"], s["b_hn"], S, L, n, rev, s["gh"], s["gates"], Y,
                        _i32(B), _i32(H)))
            else:
                launch((gx, s["w_hh_T"], S, L, n, rev, s["gh"], Y, _i32(B), _i32(H), _i32(flags)))
            return True
        k, (grid, block) = self._fused(kind + "_fused_forward", S.dtype, B, H)
        wT, gh = s["w_hh_T"], s["gh"]
        for t, prev, nxt in self._loop(_steps(T, s["reverse"])):
            if kind == "lstm":
                C = s["C"]
                args = (gx[t], wT, C[prev], S[prev], L, _i32(t), s["peep"], gh, s["gates"][t],
                        C[nxt], S[nxt], Y[t], _i32(B), _i32(H), _i32(flags))
            elif kind == "gru":
                args = (gx[t], wT, s["b_hn"], S[prev], L, _i32(t), gh, s["gates"][t], S[nxt],
                        Y[t], _i32(B), _i32(H))
            else:
                args = (gx[t], wT, S[prev], L, _i32(t), gh, S[nxt], Y[t], _i32(B), _i32(H),
                        _i32(flags))
            k(grid, block, args)
        return True

    def sequence_backward(self, cell, w, s, g, flags):
        S, L, dY = s["S"], s["L"], g["dY"]
        T, B, H = dY.shape
        algo = self.loop_algo(cell, flags, T, B, H, S.dtype.itemsize)
        if algo == "stepwise":
            return False
        kind = cell.kind
        if algo == "persistent":
            launch = self._persistent(kind + "_persistent_backward", S.dtype, B, H, cell.gates)
            n, rev, w_hh = _i32(T), _i32(s["reverse"]), w["w_hh"]
            if kind == "lstm":
                launch((w_hh, s["gates"], s["C"], g["dh"], dY, g["dc"], L, n, rev, s["peep"],
                        g["dGx"], _i32(B), _i32(H), _i32(flags)))
            elif kind == "gru":
                launch((w_hh, s["gates"], S, g["dh"], dY, L, n, rev, g["dGx"], g["dGh"],
                        _i32(B), _i32(H)))
            else:
                launch((w_hh, S, g["dh"], dY, L, n, rev, g["dGx"], _i32(B), _i32(H), _i32(flags)))
            first = T - 1 if s["reverse"] else 0  # the step processed last
            self.matmul_acc(g["dGh"][first], w_hh, out=g["dh"])  # dL/dh_0
            return True
        k, (grid, block) = self._fused(kind + "_fused_backward", S.dtype, B, H)
        w_hh, dh = w["w_hh"], g["dh"]
        dGx, dGh = g["dGx"], g["dGh"]  # the same array except for the GRU
        last = None  # the step processed before this one
        for t, prev, nxt in self._loop(_steps(T, s["reverse"])[::-1]):
            dg_prev = dGh[t if last is None else last]
            has = _i32(last is not None)
            if kind == "lstm":
                C = s["C"]
                args = (dg_prev, has, w_hh, s["gates"][t], C[nxt], C[prev], dh, dY[t], g["dc"],
                        L, _i32(t), s["peep"], dGx[t], _i32(B), _i32(H), _i32(flags))
            elif kind == "gru":
                args = (dg_prev, has, w_hh, s["gates"][t], S[prev], dh, dY[t], L, _i32(t),
                        dGx[t], dGh[t], _i32(B), _i32(H))
            else:
                args = (dg_prev, has, w_hh, S[nxt], dh, dY[t], L, _i32(t), dGx[t], _i32(B),
                        _i32(H), _i32(flags))
            k(grid, block, args)
            last = t
        self.matmul_acc(dGh[last], w_hh, out=dh)  # dL/dh_0: the first step's recurrent term
        return True

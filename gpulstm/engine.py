"""The sequence engine: forward and BPTT loops, written once for every execution.

Per layer and direction (docs/design.md, "The one loop"):

1. the input projection of all time steps: one GEMM ``(T*B, I) x (I, G*H)`` plus bias;
2. for each time step: one recurrent GEMM ``(B, Hs) x (Hs, G*H)`` and ONE pointwise step
   (plus, for an LSTM with ``proj_size``, the projection GEMM and a masking step);
3. backward runs the steps in reverse: one pointwise backward step, then the recurrent GEMM
   accumulated into dL/dh; weight gradients are whole-sequence GEMMs after the loop
   (deterministic: no atomics).

Everything here talks to an *execution* ``ex`` (see :mod:`gpulstm.backends`): ``ex.xp`` the
array module, ``ex.pw`` the pointwise ops, ``ex.matmul(a, b, out)``,
``ex.matmul_acc(a, b, out)`` (``out += a @ b``), ``ex.linear(a, b, bias, out)``
(``out = a @ b + bias``, bias a row or None) and ``ex.transposed(a)`` (a C-contiguous copy of
``a.T``), ``ex.dropout_mask(shape, p, seed, offset, dtype)`` (the scaled keep mask of the
Philox stream (seed, offset), :mod:`gpulstm.backends.philox`). Buffers are allocated once per
call; the loop allocates nothing.

Where the time loop runs is the execution's choice. The Python loop below (one recurrent GEMM
and one pointwise step per time step, :mod:`gpulstm.cells`) is the reference and the default.
An execution may run a whole direction's time loop itself by defining

``ex.sequence_forward(cell, w, s, flags) -> bool``
    Fill, in place, the buffers of the saved dict ``s`` for every step of one direction,
    exactly as the stepwise loop does: reads ``s["gx"]`` [T,B,G*H] (input projection, bias
    folded), ``s["w_hh_T"]`` (absent when the execution sets ``stored_weights = True``: it
    then reads ``w["w_hh"]`` as stored), ``s["L"]``, ``s["reverse"]``, the initial slot of
    ``s["S"]`` (and ``s["C"]``, ``s["peep"]``, ``s["b_hn"]``, ``s["w_hr_T"]`` where the cell
    has them); writes the other slots of ``S``/``C``, ``s["gates"]``, ``s["Y"]`` (and
    ``s["M"]``).
``ex.sequence_backward(cell, w, s, g, flags) -> bool``
    The reverse loop: from ``g["dY"]``, ``g["dh"]`` (and ``g["dc"]``) as left by the caller,
    fill ``g["dGx"]`` (and ``g["dGh"]``, ``g["DHR"]``) for every step and leave ``g["dh"]`` /
    ``g["dc"]`` holding dL/dh0 / dL/dc0. It may also leave ``g["db"]``, the sum of ``dGx``
    over steps and rows (the input bias gradient), which the engine then does not recompute.

Either returns False to decline (an option it does not implement); the engine then runs the
stepwise loop. The input projection and the whole-sequence weight-gradient GEMMs stay here,
except that an execution defining ``ex.projects_input(cell, s, flags) -> bool`` may answer
True, promising that its ``sequence_forward`` runs that direction and projects the input
itself: ``s["gx"]`` is then absent and ``s["x"]``, ``s["w_ih_T"]`` (with ``stored_weights``:
absent, ``w["w_ih"]`` as stored) and ``s["bias"]`` (the folded bias or None) are there
instead (the cpu execution projects a few time steps at a time into a buffer that stays in
cache, or each step inside its recurrent GEMM).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import lowp
from .cells import product, state_slot, zero_stride


def _slots(T, reverse, n=None):
    """(t, prev, nxt) for the steps in processing order; state slots modulo ``n`` (the
    2-slot ring of the inference path; None: the whole history)."""
    if reverse:
        steps = [(t, t + 1, t) for t in range(T - 1, -1, -1)]
    else:
        steps = [(t, t, t + 1) for t in range(T)]
    return steps if n is None else [(t, p % n, q % n) for t, p, q in steps]


def direction_forward(ex, cell, w, x, h0, c0, lengths, reverse, save=True):
    """One direction of one layer. x [T,B,I]; h0 [B,Hs]; c0 [B,H] (LSTM) or None;
    lengths int32 [B] (the backend's array). Returns (y [T,B,Hs], saved dict).

    With ``save=False`` (inference) nothing is kept per time step but the output: the gate
    activations go to one [B,width] slot that every step overwrites (``s["gates"]`` is a
    zero-time-stride [T,B,width] view of it, so executions index it as usual; LSTM
    ``proj_size``: ``s["M"]`` likewise), and the states ``s["S"]`` / ``s["C"]`` are a ring of
    2 slots, state i in slot i % 2 (:func:`state_slot`), wherever the stepwise loop runs or
    the execution sets ``ring_states = True`` (its ``sequence_forward`` then takes slot
    indices modulo ``s["S"].shape[0]``); other executions get the whole [T+1,B,*] history.
    The dict then serves only :func:`final_states`."""
    xp = ex.xp
    T, B, I = x.shape
    GH = w["w_ih"].shape[0]
    H = GH // cell.gates
    Hs = cell.state_size(w)
    dt = x.dtype
    s = {"x": x, "L": lengths, "reverse": reverse}
    run = getattr(ex, "sequence_forward", None)
    # contiguous transposed weights: BLAS through matmul(out=) wants them (a strided view
    # makes NumPy fall back to a slow loop); one copy per call, outside the time loop, unless
    # the execution's own loop reads the weights as stored
    stored = run is not None and getattr(ex, "stored_weights", False)
    dense = cell.dense_recurrence  # else no W_hh^T: the cell's step reads its own weights
    if dense and not stored:
        s["w_hh_T"] = ex.transposed(w["w_hh"])
    ring = not save and T > 1 and (run is None or getattr(ex, "ring_states", False))
    s["S"] = xp.empty((2 if ring else T + 1, B, Hs), dt)
    s["S"][state_slot(s, T if reverse else 0)] = h0
    cell.init_forward(ex, w, s, c0)  # C, peepholes, projection, GRU's b_hn: the cell's own
    width = cell.saved_width(H)
    if width and save:
        s["gates"] = xp.empty((T, B, width), dt)
    elif width:  # inference: one slot, time stride 0
        s["gates"] = zero_stride(xp, T, B, width, dt)
    else:
        s["gates"] = None
    s["Y"] = xp.empty((T, B, Hs), dt)
    flags = cell.flags(w)
    bias = cell.fold_bias(xp, w)
    own = getattr(ex, "projects_input", None)
    if own is not None and own(cell, s, flags):
        s["bias"] = bias  # the execution's loop projects x itself
        if not stored:
            s["w_ih_T"] = ex.transposed(w["w_ih"])
    else:
        # the input projection of every time step in one GEMM, the folded bias added
        gx = xp.empty((T, B, GH), dt)
        ex.linear(x.reshape(T * B, I), ex.transposed(w["w_ih"]), bias, out=gx.reshape(T * B, GH))
        s["gx"] = gx
    s["gh"] = xp.empty((B, GH), dt)
    if run is None or not run(cell, w, s, flags):
        if dense and "w_hh_T" not in s:  # the execution declined: the stepwise GEMMs need it
            s["w_hh_T"] = ex.transposed(w["w_hh"])
        for t, prev, nxt in _slots(T, reverse, s["S"].shape[0]):
            cell.step_forward(ex, w, s, t, prev, nxt, flags)
    transients = ("gx", "gh", "w_hh_T", "w_ih_T", "bias") + cell.forward_transients \
        + (() if save else ("gates",))
    for k in transients:  # backward needs none of them
        s.pop(k, None)
    return s["Y"], s


def final_states(cell, s):
    i = state_slot(s, 0 if s["reverse"] else s["x"].shape[0])
    return s["S"][i], (s["C"][i] if cell.has_cell_state else None)


def direction_backward(ex, cell, w, s, dy, dh_n, dc_n, record=None):
    """BPTT for one direction. dy [T,B,Hs]; dh_n [B,Hs] or None; dc_n [B,H] or None.
    Returns (dx [T,B,I], dh0, dc0, grads dict with the keys of ``w``).

    With a dict ``record``, also stores the total gradient w.r.t. the state written at each
    time step: ``record["dh"]`` [T,B,Hs] = dL/dh_t and (LSTM) ``record["dc"]`` [T,B,H] = dL/dc_t
    (for the gradient-flow probe; costs one copy per step)."""
    xp = ex.xp
    x, S, reverse = s["x"], s["S"], s["reverse"]
    T, B, I = x.shape
    GH = w["w_ih"].shape[0]
    H = GH // cell.gates
    Hs = S.shape[2]
    dt = x.dtype
    g = {"dY": dy}
    g["dh"] = xp.zeros((B, Hs), dt) if dh_n is None else dh_n.copy()
    g["dGx"] = xp.empty((T, B, GH), dt)
    cell.init_backward(ex, w, s, g, dc_n)  # dGh, dc and the cell's own buffers
    flags = cell.flags(w)
    if record is not None:
        record["dh"] = xp.empty((T, B, Hs), dt)
        if cell.has_cell_state:
            record["dc"] = xp.empty((T, B, H), dt)
    run = getattr(ex, "sequence_backward", None) if record is None else None
    done = run is not None and run(cell, w, s, g, flags)
    for t, prev, nxt in () if done else reversed(_slots(T, reverse)):
        if record is not None:
            xp.add(g["dh"], dy[t], out=record["dh"][t])
            if cell.has_cell_state:
                record["dc"][t] = g["dc"]
        cell.step_backward(ex, w, s, g, t, prev, nxt, flags)

    # whole-sequence weight gradients
    TB = T * B
    dGx = g["dGx"].reshape(TB, GH)
    dGh = g["dGh"].reshape(TB, GH)
    s_prev = S[1:] if reverse else S[:-1]  # the state each time step read
    db = g.get("db")  # the execution's loop may have summed it already
    if db is None and w["b_ih"] is not None:
        db = lowp.total(dGx, 0)  # accumulated in float32 for bfloat16
    grads = {
        "w_ih": product(ex, dGx.T, x.reshape(TB, I)),
        "w_hh": cell.recurrent_grad(ex, dGh, s_prev.reshape(TB, Hs)),
        "b_ih": db,
        # LSTM and RNN: the same gradient (dGh is dGx); one reduction, not two
        "b_hh": None if db is None else (db.copy() if dGh is dGx else lowp.total(dGh, 0)),
    }
    grads.update(cell.extra_grads(ex, w, s, g))
    dx = product(ex, dGx, w["w_ih"]).reshape(T, B, I)
    return dx, g["dh"], g.get("dc"), grads


def saved_bytes(cell, T, B, input_size, H, Hs, num_layers, D, itemsize):
    """Device bytes a stacked forward keeps for its backward (plus its largest transient, the
    input projection of one direction): what an out-of-memory message reports."""
    per_layer = D * cell.saved_elements(T, B, H, Hs) + T * B * D * Hs  # + concatenated/dropped-out layer output
    return itemsize * (num_layers * per_layer + T * B * cell.gates * H)


@dataclass
class Context:
    """What a stacked forward saves for its backward."""
    cell: object
    params: list  # [layer][direction] -> weight dict
    # [layer][direction] -> saved dict; None after a forward with save=False
    saved: list = field(default_factory=list)
    masks: list = field(default_factory=list)  # dropout mask after each layer but the last
    state_grads: list = None  # [layer][direction] per-step dL/dh_t, dL/dc_t (when recorded)


def private_input(ex, x, lengths):
    """A C-contiguous copy of x [T,B,I] with the padded positions (t >= lengths[b]) set to 0.

    The backward reads x in the weight-gradient GEMM dW_ih = dGx^T x: a copy keeps a caller
    who changes their array between forward and backward from changing the gradients, and
    zeros in the padding keep NaN/inf there (never read by the forward) out of it (dGx is 0
    there, but 0 * NaN = NaN)."""
    xp = ex.xp
    x = xp.array(x, dtype=x.dtype, order="C", copy=True)
    pad = xp.arange(x.shape[0], dtype=lengths.dtype)[:, None] >= lengths[None, :]  # [T,B]
    xp.copyto(x, 0, where=pad[:, :, None])
    return x


class DropoutStream:
    """Where the dropout masks come from: a 64-bit Philox seed and the counter (offset) of the
    next unused Philox block. Each mask of ``n`` elements takes ``ceil(n / 4)`` blocks
    (:meth:`take`), so successive masks are fresh and a given (seed, offset) reproduces one;
    the masks themselves are drawn by the execution (``ex.dropout_mask``): the same bits on
    every backend."""

    def __init__(self, seed, offset=0):
        self.seed = int(seed) & (2**64 - 1)
        self.offset = int(offset) & (2**64 - 1)

    def take(self, n):
        """(seed, offset) of a mask of ``n`` elements; advances the offset past its blocks."""
        offset = self.offset
        self.offset = (offset + (int(n) + 3) // 4) & (2**64 - 1)
        return self.seed, offset

    def __repr__(self):
        return f"DropoutStream(seed={self.seed:#x}, offset={self.offset})"


def dropout_mask(ex, rng, shape, p, dtype):
    """The scaled keep mask (1 / (1 - p) where kept, 0 elsewhere; all 0 for p = 1, as torch)
    of ``shape``. ``rng`` a :class:`DropoutStream`: drawn by the execution from Philox (on the
    device for the kernel executions). Any other ``rng`` is a host generator whose
    ``random(shape)`` gives uniforms in [0, 1) (``gpulstm.torch`` draws torch's), kept where
    >= p and uploaded."""
    if isinstance(rng, DropoutStream):
        n = 1
        for d in shape:
            n *= int(d)
        seed, offset = rng.take(n)
        return ex.dropout_mask(shape, p, seed, offset, dtype)
    keep = rng.random(shape) >= p
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0  # p = 1 zeroes all (torch)
    return ex.asarray(keep * scale, dtype)


def forward(ex, cell, params, x, h0, c0, lengths, dropout=0.0, rng=None, save=True):
    """Stacked (multi-layer, optionally bidirectional) forward.

    params [L][D] weight dicts; x [T,B,I]; h0 [L*D,B,Hs]; c0 [L*D,B,H] or None;
    lengths int32 [B]; dropout applied to the output of every layer but the last with masks
    from ``rng`` (see :func:`dropout_mask`: a :class:`DropoutStream` gives the same masks on
    every backend).
    ``save=False`` (inference) keeps no history for a backward: no per-step gates, and
    ``ctx.saved`` is None (:func:`backward` then raises).
    Returns (y [T,B,D*Hs], h_n, c_n, ctx).
    """
    ex = lowp.execution_for(ex, x.dtype)  # bfloat16: float32 compute on the host (gpulstm.lowp)
    xp = ex.xp
    D = len(params[0])
    ctx = Context(cell, params)
    h_n, c_n = [], []
    # inference never reads x again: no private copy
    inp = private_input(ex, x, lengths) if save else x
    for layer, dirs in enumerate(params):
        ys, saved = [], []
        for d, w in enumerate(dirs):
            k = layer * D + d
            y, s = direction_forward(ex, cell, w, inp, h0[k], None if c0 is None else c0[k],
                                     lengths, reverse=d == 1, save=save)
            hn, cn = final_states(cell, s)
            h_n.append(hn)
            c_n.append(cn)
            ys.append(y)
            saved.append(s)
        if save:
            ctx.saved.append(saved)
        out = ys[0] if D == 1 else xp.concatenate(ys, axis=2)
        if dropout > 0 and layer < len(params) - 1:
            mask = dropout_mask(ex, rng, out.shape, dropout, out.dtype)
            if save:
                ctx.masks.append(mask)
            out = out * mask
        inp = out
    h_n = xp.stack(h_n)
    c_n = xp.stack(c_n) if cell.has_cell_state else None
    if not save:
        ctx.saved = None
    return inp, h_n, c_n, ctx


def backward(ex, ctx, dy, dh_n=None, dc_n=None, record_state_grads=False):
    """BPTT through a stacked forward. dy [T,B,D*Hs]; dh_n [L*D,B,Hs] or None; dc_n likewise.
    Returns (dx [T,B,I], dh0 [L*D,B,Hs], dc0 or None, grads [L][D] dicts). With
    ``record_state_grads`` the per-step state gradients land in ``ctx.state_grads[L][D]``
    (see :func:`direction_backward`)."""
    if ctx.saved is None:
        raise RuntimeError(
            "backward() needs the history a training forward saves, but the last forward ran "
            "in inference mode (eval(), i.e. save=False) and saved nothing; call train() "
            "before the forward you want to differentiate")
    ex = lowp.execution_for(ex, dy.dtype)
    xp = ex.xp
    cell, params = ctx.cell, ctx.params
    D = len(params[0])
    L = len(params)
    dh0 = [None] * (L * D)
    dc0 = [None] * (L * D)
    grads = [[None] * D for _ in range(L)]
    ctx.state_grads = [[{} if record_state_grads else None for _ in range(D)] for _ in range(L)]
    for layer in range(L - 1, -1, -1):
        Hs = ctx.saved[layer][0]["S"].shape[2]
        dx = None
        for d in range(D):
            k = layer * D + d
            dy_d = xp.ascontiguousarray(dy[..., d * Hs:(d + 1) * Hs])
            dxd, dh0[k], dc0[k], grads[layer][d] = direction_backward(
                ex, cell, params[layer][d], ctx.saved[layer][d], dy_d,
                None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k],
                ctx.state_grads[layer][d])
            dx = dxd if dx is None else dx + dxd
        if layer > 0 and ctx.masks:
            dx = dx * ctx.masks[layer - 1]
        dy = dx
    dc0 = xp.stack(dc0) if cell.has_cell_state else None
    return dy, xp.stack(dh0), dc0, grads

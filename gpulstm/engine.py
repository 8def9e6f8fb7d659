"""The sequence engine: forward and BPTT loops, written once for every execution.

Per layer and direction (docs/design.md, "The one loop"):

1. the input projection of all time steps: one GEMM ``(C*B, I) x (I, G*H)`` plus bias per
   window of C steps (:func:`window_steps`);
2. for each time step: one recurrent GEMM ``(B, Hs) x (Hs, G*H)`` and ONE pointwise step
   (plus, for an LSTM with ``proj_size``, the projection GEMM and a masking step);
3. backward runs the steps in reverse: one pointwise backward step, then the recurrent GEMM
   accumulated into dL/dh; weight gradients are GEMMs after the loop, one per window, summed
   in processing order (deterministic: no atomics; the same bits with recompute, see
   docs/design.md, "Recompute").

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
    ``g["dc"]`` holding dL/dh0 / dL/dc0. It may also leave ``g["db"]`` [n, G*H], the sums of
    ``dGx`` over the steps and rows of each window of ``g["window"]`` steps (window i: steps
    [i w, (i + 1) w) of the call; the input bias gradient), which the engine then does not
    recompute.

Either returns False to decline (an option it does not implement); the engine then runs the
stepwise loop. Either may run on part of a direction (a window, or a recompute segment: the
dicts' per-step buffers are then views of those steps, ``L`` clipped to them): an execution
whose loop over part of a direction gives the bits of the loop over the whole sets
``forward_segment_exact`` / ``backward_segment_exact`` (the engine then calls it once per
direction or segment, else once per window); ``window_rows`` (optional) sets its windows.
The input projection and the weight-gradient GEMMs stay here, except that an execution defining ``ex.projects_input(cell, s, flags) -> bool`` may answer
True, promising that its ``sequence_forward`` runs that direction (asked only where one call
runs the whole direction) and projects the input itself: ``s["gx"]`` is then absent and ``s["x"]``, ``s["w_ih_T"]`` (with ``stored_weights``:
absent, ``w["w_ih"]`` as stored) and ``s["bias"]`` (the folded bias or None) are there
instead (the cpu execution projects a few time steps at a time into a buffer that stays in
cache, or each step inside its recurrent GEMM).
"""
from __future__ import annotations

import math
import numbers
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


# -- windows and recompute segments (docs/design.md, "Recompute") ---------------------------
#: rows (time steps x batch rows) of one window: the unit of the whole-sequence GEMMs,
#: unless the execution says otherwise (``ex.window_rows``; the kernel executions take larger
#: windows, see gpulstm.backends.kernel_loop)
WINDOW_ROWS = 2048


def window_rows(ex):
    """The rows of one window on execution ``ex``: its ``window_rows``, else
    :data:`WINDOW_ROWS`."""
    return int(getattr(ex, "window_rows", None) or WINDOW_ROWS)


def window_steps(T, B, rows=None):
    """C, the time steps of one window of a direction of ``T`` steps and ``B`` rows: enough
    rows (``C * B >= rows``, default :data:`WINDOW_ROWS`) for an efficient GEMM, at most
    ``T``. Chosen from the shape (and the execution) alone, never from the recompute setting:
    the input projection, the weight gradients, dx and the bias sums run window by window
    (window i: steps [i C, (i + 1) C), aligned to absolute time), accumulated in the
    backward's processing order, with or without recompute; that is what makes recompute's
    gradients bitwise the same."""
    rows = WINDOW_ROWS if rows is None else rows
    return max(1, min(int(T), -(-int(rows) // max(int(B), 1))))


_RECOMPUTE = "recompute must be False, None, True or an int >= 1 (time steps per segment)"


def check_recompute(recompute):
    """``recompute`` validated: None (off: False or None), True (segments of ceil(sqrt(T))
    steps) or an int k >= 1 (segments of k steps); TypeError / ValueError otherwise."""
    if recompute is None or recompute is False:
        return None
    if recompute is True:
        return True
    if isinstance(recompute, bool) or not isinstance(recompute, numbers.Integral):
        raise TypeError(f"{_RECOMPUTE}; got {type(recompute).__name__} {recompute!r}")
    if recompute < 1:
        raise ValueError(f"{_RECOMPUTE}; got {recompute!r}")
    return int(recompute)


def segment_steps(recompute, T, B, rows=None):
    """Steps per recompute segment of a direction of ``T`` steps and ``B`` rows, or None (no
    recompute, or one segment would hold the whole sequence: nothing to save). True:
    ceil(sqrt(T)); an int k: k; either rounded up to a multiple of the window
    (:func:`window_steps`), so that every segment starts on a window boundary."""
    rc = check_recompute(recompute)
    if rc is None or T < 1:
        return None
    C = window_steps(T, B, rows)
    k = math.isqrt(T - 1) + 1 if rc is True else rc
    k = -(-k // C) * C
    return k if k < T else None


def _windows(T, C):
    """[(a, b)]: the windows of ``T`` steps (C each, the last one shorter) in time order."""
    return [(a, min(a + C, T)) for a in range(0, T, C)]


def _clip_lengths(xp, lengths, a, b):
    """The lengths of the steps [a, b) as a sequence of their own: the kernels and loops run
    step t where t < L, i.e. local step t - a where t - a < L - a (either direction)."""
    return xp.clip(lengths - a, 0, b - a).astype(lengths.dtype)


_STEP_KEYS = ("x", "gx", "gates", "Y", "dY", "dGx", "dGh")  # [T, ...] per-step buffers
_STATE_KEYS = ("S",)  # [T+1, ...] state histories


def _view(ex, cell, d, a, b):
    """The saved or gradient dict ``d`` restricted to the steps [a, b): per-step buffers
    ([T, ...], also the cell's :attr:`~gpulstm.cells.Cell.step_buffers`) sliced to [a, b),
    state histories (``S``, the cell's ``state_buffers``) to slots [a, b] (the step at local
    time t then reads and writes its usual slots), ``L`` clipped; everything else (weights,
    constants, the carried gradients dh / dc) shared."""
    v = dict(d)
    done = {}  # id -> its slice: a buffer under two names (LSTM: dGh is dGx) stays one
    for keys, end in ((_STEP_KEYS + tuple(cell.step_buffers), b),
                      (_STATE_KEYS + tuple(cell.state_buffers), b + 1)):
        for k in keys:
            if v.get(k) is not None:
                if id(d[k]) not in done:
                    done[id(d[k])] = d[k][a:end]
                v[k] = done[id(d[k])]
    if d.get("L") is not None:
        v["L"] = _clip_lengths(ex.xp, d["L"], a, b)
    v.pop("graph_lease", None)  # a CUDA-graph arena holds a whole direction, not a window
    return v


def _sliced(cell):
    return set(_STEP_KEYS + tuple(cell.step_buffers) + _STATE_KEYS + tuple(cell.state_buffers))


def _merge_back(cell, d, v):
    """Entries an execution rebound (not wrote in place) in the window view ``v``: back into
    ``d`` (the shared ones: dh, dc, ...; sliced buffers are written in place)."""
    skip = _sliced(cell) | {"L"}
    for k, val in v.items():
        if k not in skip and d.get(k) is not val:
            d[k] = val


def _exact(ex, phase):
    """Whether the execution's ``sequence_forward`` (``phase`` "forward") or
    ``sequence_backward`` ("backward") over consecutive windows of a direction give the same
    bits as one call over the whole direction (its ``forward_segment_exact`` /
    ``backward_segment_exact``): then the engine calls it once per direction (or recompute
    segment); otherwise once per window, with or without recompute."""
    return bool(getattr(ex, phase + "_segment_exact", False))


def direction_forward(ex, cell, w, x, h0, c0, lengths, reverse, save=True, window=None):
    """One direction of one layer. x [T,B,I]; h0 [B,Hs]; c0 [B,H] (LSTM) or None;
    lengths int32 [B] (the backend's array). Returns (y [T,B,Hs], saved dict).

    ``window``: the steps of one window (:func:`window_steps` of the whole sequence; a
    recompute segment passes the whole sequence's). The input projection runs window by
    window; so does the execution's time loop unless it is ``segment_exact``.

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
    C = window_steps(T, B, window_rows(ex)) if window is None else window
    GH = w["w_ih"].shape[0]
    H = GH // cell.gates
    Hs = cell.state_size(w)
    dt = x.dtype
    s = {"x": x, "L": lengths, "reverse": reverse}
    run = getattr(ex, "sequence_forward", None)
    wins = _windows(T, C)
    # one loop call for the whole direction, or one per window (see _exact)
    whole = not save or len(wins) <= 1 or run is None or _exact(ex, "forward")
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
    own = getattr(ex, "projects_input", None) if whole else None
    if own is not None and own(cell, s, flags):
        s["bias"] = bias  # the execution's loop projects x itself
        if not stored:
            s["w_ih_T"] = ex.transposed(w["w_ih"])
    else:
        # the input projection, one GEMM per window, the folded bias added
        gx = xp.empty((T, B, GH), dt)
        w_ih_T = ex.transposed(w["w_ih"])
        for a, b in wins:
            ex.linear(x[a:b].reshape((b - a) * B, I), w_ih_T, bias,
                      out=gx[a:b].reshape((b - a) * B, GH))
        s["gx"] = gx
    s["gh"] = xp.empty((B, GH), dt)

    def stepwise(d, n):
        if dense and "w_hh_T" not in s:  # the execution declined: the stepwise GEMMs need it
            s["w_hh_T"] = ex.transposed(w["w_hh"])
        d["w_hh_T"] = s.get("w_hh_T")
        for t, prev, nxt in _slots(n, reverse, d["S"].shape[0]):
            cell.step_forward(ex, w, d, t, prev, nxt, flags)

    if whole:
        if run is None or not run(cell, w, s, flags):
            stepwise(s, T)
    else:
        for a, b in (wins[::-1] if reverse else wins):
            v = _view(ex, cell, s, a, b)
            if not run(cell, w, v, flags):
                stepwise(v, b - a)
    transients = ("gx", "gh", "w_hh_T", "w_ih_T", "bias") + cell.forward_transients \
        + (() if save else ("gates",))
    for k in transients:  # backward needs none of them
        s.pop(k, None)
    return s["Y"], s


def _recompute_forward(ex, cell, w, x, h0, c0, lengths, reverse, K, C):
    """One direction with recompute: the segments of ``K`` steps run in processing order,
    each as :func:`direction_forward` of its own from the state the previous one left; only
    the state at each segment's start is kept (and the output). Returns (y, saved dict)."""
    xp = ex.xp
    T = x.shape[0]
    segs = [(a, min(a + K, T)) for a in range(0, T, K)]
    if reverse:
        segs = segs[::-1]
    y = None
    h, c = h0.copy(), None if c0 is None else c0.copy()
    bounds = []
    for a, b in segs:
        bounds.append((h, c))
        ys, sg = direction_forward(ex, cell, w, x[a:b], h, c, _clip_lengths(xp, lengths, a, b),
                                   reverse, save=True, window=C)
        if y is None:
            y = xp.empty((T,) + ys.shape[1:], ys.dtype)
        y[a:b] = ys
        hn, cn = final_states(cell, sg)
        h, c = hn.copy(), None if cn is None else cn.copy()
        del sg, ys
    s = {"x": x, "L": lengths, "reverse": reverse, "segments": segs, "bounds": bounds,
         "window": C, "final": (h, c)}
    return y, s


def final_states(cell, s):
    if "final" in s:  # recompute: kept by _recompute_forward
        return s["final"]
    i = state_slot(s, 0 if s["reverse"] else s["x"].shape[0])
    return s["S"][i], (s["C"][i] if cell.has_cell_state else None)


def _init_grads(ex, cell, w, s, T, dh_n, dc_n):
    """The gradient dict of one direction's backward over ``T`` steps (the buffers of the
    cell's :meth:`~gpulstm.cells.Cell.init_backward`)."""
    xp = ex.xp
    B, Hs = s["S"].shape[1:]
    dt = s["S"].dtype
    g = {"dY": None}
    g["dh"] = xp.zeros((B, Hs), dt) if dh_n is None else dh_n.copy()
    g["dGx"] = xp.empty((T, B, w["w_ih"].shape[0]), dt)
    cell.init_backward(ex, w, s, g, dc_n)  # dGh, dc and the cell's own buffers
    return g


def _accumulate(xp, acc, part):
    for k, v in part.items():
        if v is None:
            continue
        if k in acc:
            xp.add(acc[k], v, out=acc[k])
        else:
            acc[k] = v


def _bptt(ex, cell, w, s, g, C, acc, dx, record=None):
    """The reverse loop over the steps of ``s`` / ``g`` (a direction or a recompute segment
    starting on a window boundary), then its windows' weight gradients accumulated into
    ``acc`` and its dx written into ``dx`` [T,B,I], window by window in processing order."""
    xp = ex.xp
    x, reverse = s["x"], s["reverse"]
    T, B, I = x.shape
    GH = w["w_ih"].shape[0]
    flags = cell.flags(w)
    wins = _windows(T, C)
    g["window"] = C
    run = getattr(ex, "sequence_backward", None) if record is None else None
    db = {}  # window index -> the execution's sum of dGx over the window (g["db"])

    def stepwise(d, n):
        for t, prev, nxt in reversed(_slots(n, reverse)):
            if record is not None:
                xp.add(d["dh"], d["dY"][t], out=record["dh"][t])
                if cell.has_cell_state:
                    record["dc"][t] = d["dc"]
            cell.step_backward(ex, w, s if d is g else d, d, t, prev, nxt, flags)

    if run is None:
        stepwise(g, T)
    elif _exact(ex, "backward") or len(wins) <= 1:
        if run(cell, w, s, g, flags):
            sums = g.pop("db", None)  # [windows, G*H]
            if sums is not None:
                db = {i: sums[i] for i in range(len(wins))}
        else:
            stepwise(g, T)
    else:
        for i in (range(len(wins)) if reverse else range(len(wins) - 1, -1, -1)):
            a, b = wins[i]
            sv, gv = _view(ex, cell, s, a, b), _view(ex, cell, g, a, b)
            if run(cell, w, sv, gv, flags):
                sums = gv.pop("db", None)
                if sums is not None:
                    db[i] = sums[0]
            else:
                for t, prev, nxt in reversed(_slots(b - a, reverse)):
                    cell.step_backward(ex, w, sv, gv, t, prev, nxt, flags)
            _merge_back(cell, g, gv)

    # the windows' weight gradients and dx, in processing order
    split = g["dGh"] is not g["dGx"]
    for i in (range(len(wins)) if reverse else range(len(wins) - 1, -1, -1)):
        a, b = wins[i]
        rows = (b - a) * B
        sv, gv = _view(ex, cell, s, a, b), _view(ex, cell, g, a, b)
        dGx = gv["dGx"].reshape(rows, GH)
        dGh = gv["dGh"].reshape(rows, GH)
        s_prev = sv["S"][1:] if reverse else sv["S"][:-1]  # the state each time step read
        xs = sv["x"].reshape(rows, I)
        if "w_ih" in acc:  # the GEMMs add into the sums of the earlier windows
            ex.matmul_acc(dGx.T, xs, out=acc["w_ih"])
        else:
            acc["w_ih"] = product(ex, dGx.T, xs)
        acc["w_hh"] = cell.recurrent_grad(ex, dGh, s_prev.reshape(rows, s_prev.shape[2]),
                                          out=acc.get("w_hh"))
        part = {}
        if w["b_ih"] is not None:
            # bfloat16: each window's sum accumulated in float32 (lowp.total)
            part["b_ih"] = db[i].copy() if i in db else lowp.total(dGx, 0)
            if split:
                part["b_hh"] = lowp.total(dGh, 0)
        part.update(cell.window_grads(ex, w, sv, gv))
        _accumulate(xp, acc, part)
        ex.matmul(dGx, w["w_ih"], out=dx[a:b].reshape(rows, I))


def _grads(ex, cell, w, s, g, acc):
    grads = {"w_ih": acc.pop("w_ih"), "w_hh": acc.pop("w_hh"), "b_ih": acc.pop("b_ih", None)}
    db = grads["b_ih"]
    # LSTM and RNN: the same gradient (dGh is dGx); one reduction, not two
    grads["b_hh"] = acc.pop("b_hh", None if db is None else db.copy())
    grads.update(acc)
    grads.update(cell.extra_grads(ex, w, s, g))
    return grads


def direction_backward(ex, cell, w, s, dy, dh_n, dc_n, record=None):
    """BPTT for one direction. dy [T,B,Hs]; dh_n [B,Hs] or None; dc_n [B,H] or None.
    Returns (dx [T,B,I], dh0, dc0, grads dict with the keys of ``w``).

    With a dict ``record``, also stores the total gradient w.r.t. the state written at each
    time step: ``record["dh"]`` [T,B,Hs] = dL/dh_t and (LSTM) ``record["dc"]`` [T,B,H] = dL/dc_t
    (for the gradient-flow probe; costs one copy per step; not with recompute)."""
    if "segments" in s:
        if record is not None:
            raise ValueError("record_state_grads needs every step's saved state, which a "
                             "forward with recompute does not keep; run that forward with "
                             "recompute=False to record the state gradients")
        return _recompute_backward(ex, cell, w, s, dy, dh_n, dc_n)
    xp = ex.xp
    x = s["x"]
    T, B, I = x.shape
    g = _init_grads(ex, cell, w, s, T, dh_n, dc_n)
    g["dY"] = dy
    if record is not None:
        record["dh"] = xp.empty((T, B, s["S"].shape[2]), x.dtype)
        if cell.has_cell_state:
            record["dc"] = xp.empty((T, B, g["dc"].shape[1]), x.dtype)
    acc = {}
    dx = xp.empty((T, B, I), x.dtype)
    _bptt(ex, cell, w, s, g, window_steps(T, B, window_rows(ex)), acc, dx, record)
    return dx, g["dh"], g.get("dc"), _grads(ex, cell, w, s, g, acc)


def _recompute_backward(ex, cell, w, s, dy, dh_n, dc_n):
    """BPTT of a direction saved by :func:`_recompute_forward`: the segments in reverse
    processing order, each one's forward run again from its saved start state (the same
    calls as the first time) and then its BPTT, dL/dh (and dL/dc) carried from one to the
    next; the weight gradients accumulate window by window as without recompute."""
    xp = ex.xp
    x, L, reverse, C = s["x"], s["L"], s["reverse"], s["window"]
    T, B, I = x.shape
    K = max(b - a for a, b in s["segments"])
    dx = xp.empty((T, B, I), x.dtype)
    acc = {}
    g = sg = None
    for (a, b), (h, c) in reversed(list(zip(s["segments"], s["bounds"]))):
        sg = None  # the previous segment's history goes before this one's is made
        _, sg = direction_forward(ex, cell, w, x[a:b], h, c, _clip_lengths(xp, L, a, b),
                                  reverse, save=True, window=C)
        if g is None:
            g = _init_grads(ex, cell, w, sg, K, dh_n, dc_n)
        gs = _view(ex, cell, g, 0, b - a)
        gs["dY"] = dy[a:b]
        _bptt(ex, cell, w, sg, gs, C, acc, dx[a:b])
        _merge_back(cell, g, gs)
    return dx, g["dh"], g.get("dc"), _grads(ex, cell, w, sg, g, acc)


def saved_bytes(cell, T, B, input_size, H, Hs, num_layers, D, itemsize, recompute=False,
                rows=None):
    """Device bytes a stacked forward keeps for its backward (plus its largest transient, the
    input projection of one direction): what an out-of-memory message reports. With
    ``recompute`` (``rows``: the execution's :func:`window_rows`): the layer outputs, one
    state per segment, and one segment's history, projection and gradient (what its backward
    makes again)."""
    K = segment_steps(recompute, T, B, rows)
    out = T * B * D * Hs  # the concatenated / dropped-out layer output
    if K is None:
        per_layer = D * cell.saved_elements(T, B, H, Hs) + out
        return itemsize * (num_layers * per_layer + T * B * cell.gates * H)
    starts = -(-T // K) * B * (Hs + (H if cell.has_cell_state else 0))
    per_layer = D * starts + out
    return itemsize * (num_layers * per_layer + cell.saved_elements(K, B, H, Hs)
                       + 2 * K * B * cell.gates * H)  # + its projection and gradient


@dataclass
class Context:
    """What a stacked forward saves for its backward."""
    cell: object
    params: list  # [layer][direction] -> weight dict
    # [layer][direction] -> saved dict; None after a forward with save=False
    saved: list = field(default_factory=list)
    masks: list = field(default_factory=list)  # dropout mask after each layer but the last
    state_grads: list = None  # [layer][direction] per-step dL/dh_t, dL/dc_t (when recorded)
    recompute: object = None  # the forward's recompute setting (check_recompute)

    def pack(self, xp):
        """(skeleton, arrays): every array saved (``saved`` and ``masks``, not ``params``),
        listed once per reference, and the rest with their places; :meth:`unpack` with the
        same arrays (e.g. after torch's ``save_for_backward``) and the weights rebuilds it."""
        arrays = []

        def put(v):
            if isinstance(v, xp.ndarray):
                arrays.append(v)
                return _Slot(len(arrays) - 1)
            if isinstance(v, (list, tuple)):  # recompute's segment start states
                return type(v)(put(e) for e in v)
            return v

        saved = [[{k: put(v) for k, v in s.items()} for s in dirs] for dirs in self.saved]
        return (saved, [put(m) for m in self.masks], self.recompute), arrays

    @classmethod
    def unpack(cls, skeleton, arrays, cell, params):
        def get(v):
            if isinstance(v, _Slot):
                return arrays[v.i]
            if isinstance(v, (list, tuple)):
                return type(v)(get(e) for e in v)
            return v

        saved, masks, recompute = skeleton
        return cls(cell, params, [[{k: get(v) for k, v in s.items()} for s in dirs]
                                  for dirs in saved], [get(m) for m in masks],
                   recompute=recompute)


class _Slot:
    """Place of a saved array in the list :meth:`Context.pack` returns."""
    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


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
    device for the kernel executions). An ``rng`` with ``mask(shape, p, dtype)`` draws the
    scaled mask itself, as an array of ``ex`` (``gpulstm.torch``: from torch's generator).
    Any other ``rng`` is a host generator whose ``random(shape)`` gives uniforms in [0, 1),
    kept where >= p and uploaded."""
    if hasattr(rng, "mask"):
        return rng.mask(shape, p, dtype)
    if isinstance(rng, DropoutStream):
        n = 1
        for d in shape:
            n *= int(d)
        seed, offset = rng.take(n)
        return ex.dropout_mask(shape, p, seed, offset, dtype)
    keep = rng.random(shape) >= p
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0  # p = 1 zeroes all (torch)
    return ex.asarray(keep * scale, dtype)


def forward(ex, cell, params, x, h0, c0, lengths, dropout=0.0, rng=None, save=True,
            recompute=False):
    """Stacked (multi-layer, optionally bidirectional) forward.

    params [L][D] weight dicts; x [T,B,I]; h0 [L*D,B,Hs]; c0 [L*D,B,H] or None;
    lengths int32 [B]; dropout applied to the output of every layer but the last with masks
    from ``rng`` (see :func:`dropout_mask`: a :class:`DropoutStream` gives the same masks on
    every backend).
    ``save=False`` (inference) keeps no history for a backward: no per-step gates, and
    ``ctx.saved`` is None (:func:`backward` then raises).
    ``recompute`` (checkpointed BPTT; ignored with ``save=False``): False / None keeps every
    step's history; True keeps only the states at the starts of segments of ceil(sqrt(T))
    steps, an int k of k steps (either rounded up to a multiple of the window,
    :func:`segment_steps`), and :func:`backward` runs each segment's forward again before its
    BPTT: O(sqrt(T)) memory for the history instead of O(T), about one forward more of time,
    the same outputs and gradients to the bit.
    Returns (y [T,B,D*Hs], h_n, c_n, ctx).
    """
    ex = lowp.execution_for(ex, x.dtype)  # bfloat16: float32 compute on the host (gpulstm.lowp)
    xp = ex.xp
    D = len(params[0])
    rc = check_recompute(recompute)
    ctx = Context(cell, params, recompute=rc)
    h_n, c_n = [], []
    T, B = x.shape[0], x.shape[1]
    rows = window_rows(ex)
    K = segment_steps(rc, T, B, rows) if save else None
    C = window_steps(T, B, rows)
    # inference never reads x again: no private copy
    inp = private_input(ex, x, lengths) if save else x
    for layer, dirs in enumerate(params):
        ys, saved = [], []
        for d, w in enumerate(dirs):
            k = layer * D + d
            args = (ex, cell, w, inp, h0[k], None if c0 is None else c0[k], lengths, d == 1)
            if K is None:
                y, s = direction_forward(*args, save=save, window=C)
            else:
                y, s = _recompute_forward(*args, K, C)
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
    if record_state_grads and ctx.saved and "segments" in ctx.saved[0][0]:
        raise ValueError("record_state_grads needs every step's saved state, which a forward "
                         "with recompute does not keep; run that forward with "
                         "recompute=False to record the state gradients")
    for layer in range(L - 1, -1, -1):
        Hs = cell.state_size(params[layer][0])
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

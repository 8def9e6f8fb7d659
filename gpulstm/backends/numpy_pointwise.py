"""The NumPy pointwise steps: the readable reference for every kernel in ``kernels/``.

Each function here is one fused pointwise step of the sequence loop (docs/design.md, "The one
loop" and "The kernels' contract"). The CUDA kernel of the same name in ``kernels/<cell>_<forward|backward>.cu``
takes the same arguments in the same order (plus ``B``, ``H`` and ``flags`` as ints) and must
compute the same numbers up to rounding. Conventions shared by all steps:

* arrays are C-contiguous, ``B`` rows (batch) by a multiple of ``H`` columns;
  gate blocks are laid out side by side in PyTorch's order: LSTM ``i, f, g, o``;
  GRU ``r, z, n``;
* ``lengths`` is an int32 array of shape ``(B,)``; row ``b`` is *active* at time ``t`` when
  ``t < lengths[b]``. An inactive row passes its state through unchanged, writes a zero output
  and a zero gate gradient, and passes its state gradient through unchanged;
* ``t`` is the time index (not the loop step), so a reverse direction uses the same rule;
* every output array is written in full (inactive rows included), so buffers poisoned with NaN
  show any element a step forgot;
* in-place arguments (``dh_next``, ``dc_next``) are read and then written by the same element,
  which keeps the CUDA version race-free without barriers.

The recurrent state gradient follows one rule for all cells: the backward step overwrites
``dh_next`` with the *direct* part of dL/dh_{t-1} (zero for LSTM and RNN, ``dh * z`` for GRU),
and the engine then adds ``dgates_hidden @ W_hh`` with an accumulating GEMM.
"""
from __future__ import annotations

import numpy as np

from ..kernel_flags import LSTM_NO_FORGET, LSTM_PEEPHOLE, LSTM_PROJ, RNN_RELU  # noqa: F401


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)) (the formula of the kernels and of PyTorch).

    Accurate in both tails: for large negative x, exp(-x) overflows to inf (beyond about
    -88 in float32) and the result is 0, the correctly rounded value up to the denormals;
    that overflow is expected and not warned about."""
    with np.errstate(over="ignore"):
        e = np.exp(-x)
    e += 1
    return np.reciprocal(e, out=e)


def _active(lengths, t):
    """(B, 1) boolean column of the rows whose sequence still runs at time ``t``, or None when
    every row does (the common case, which then skips the masking work)."""
    act = t < lengths
    return None if act.all() else act[:, None]


def _select(act, new, old):
    """``new`` for active rows, ``old`` (an array or 0) for the others."""
    return new if act is None else np.where(act, new, old)


def lstm_forward(gx, gh, c_prev, h_prev, lengths, t, peep, gates, c_next, h_next, y, flags):
    """One LSTM step.

    gx [B,4H] input projection of x_t with both biases; gh [B,4H] h_{t-1} @ W_hh^T;
    c_prev [B,H]; h_prev [B,H] (unused with LSTM_PROJ); peep [3,H] peephole weights
    (p_i, p_f, p_o; unused without LSTM_PEEPHOLE).
    Writes gates [B,4H] = activated (i, f, g, o) (f = 1 with LSTM_NO_FORGET);
    c_next [B,H]; h_next [B,H] = o * tanh(c) (the state, or m before the projection with
    LSTM_PROJ); y [B,H] the output (zero for inactive rows; unused with LSTM_PROJ).

        i = σ(a_i + p_i c_{t-1})   f = σ(a_f + p_f c_{t-1})   g = tanh(a_g)
        c = f c_{t-1} + i g        o = σ(a_o + p_o c)         h = o tanh(c)
    """
    H = c_prev.shape[1]
    a = gx + gh
    if flags & LSTM_PEEPHOLE:
        a[:, :H] += peep[0] * c_prev
        a[:, H:2 * H] += peep[1] * c_prev
    gates[:, :2 * H] = sigmoid(a[:, :2 * H])  # i, f in one pass
    if flags & LSTM_NO_FORGET:
        gates[:, H:2 * H] = 1
    i, f = gates[:, :H], gates[:, H:2 * H]
    g = gates[:, 2 * H:3 * H]
    np.tanh(a[:, 2 * H:3 * H], out=g)
    c = f * c_prev
    c += i * g
    if flags & LSTM_PEEPHOLE:
        a[:, 3 * H:] += peep[2] * c
    o = gates[:, 3 * H:]
    o[...] = sigmoid(a[:, 3 * H:])
    h = np.tanh(c)
    h *= o
    act = _active(lengths, t)
    c_next[...] = _select(act, c, c_prev)
    if flags & LSTM_PROJ:
        h_next[...] = h
    else:
        h_next[...] = _select(act, h, h_prev)
        y[...] = _select(act, h, 0)


def lstm_backward(gates, c, c_prev, dh_in, dh_next, dy, dc_next, lengths, t, peep, dgates, flags):
    """BPTT through one LSTM step.

    gates [B,4H] saved (i, f, g, o); c [B,H] cell state after the step; c_prev [B,H];
    dh_in [B,H] dL/dm from the projection (LSTM_PROJ only); dh_next [B,H] in/out: on entry
    dL/dh_t from later steps, on exit the direct part of dL/dh_{t-1} (0 for active rows;
    untouched with LSTM_PROJ); dy [B,H] dL/dy_t (unused with LSTM_PROJ);
    dc_next [B,H] in/out: dL/dc_t on entry, dL/dc_{t-1} on exit. Writes dgates [B,4H],
    the gradient of the gate pre-activations (a_i, a_f, a_g, a_o).
    """
    H = c.shape[1]
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    tc = np.tanh(c)
    dh = dh_in if flags & LSTM_PROJ else dh_next + dy
    dao = dh * tc * o * (1 - o)
    dc = dc_next + dh * o * (1 - tc * tc)
    if flags & LSTM_PEEPHOLE:
        dc += dao * peep[2]
    dai = dc * g * i * (1 - i)
    daf = 0 if flags & LSTM_NO_FORGET else dc * c_prev * f * (1 - f)
    dag = dc * i * (1 - g * g)
    dcp = dc * f
    if flags & LSTM_PEEPHOLE:
        dcp += dai * peep[0] + daf * peep[1]
    act = _active(lengths, t)
    for k, d in enumerate((dai, daf, dag, dao)):
        dgates[:, k * H:(k + 1) * H] = _select(act, d, 0)
    dc_next[...] = _select(act, dcp, dc_next)
    if not flags & LSTM_PROJ:
        dh_next[...] = _select(act, 0, dh_next)


def lstm_proj_forward(h_next, h_prev, lengths, t, y):
    """After the projection GEMM wrote h_raw = m @ W_hr^T into h_next [B,P]:
    y [B,P] = h_raw for active rows, 0 otherwise; h_next = h_raw if active else h_prev [B,P]."""
    act = _active(lengths, t)
    y[...] = h_next if act is None else np.where(act, h_next, 0)
    h_next[...] = _select(act, h_next, h_prev)


def lstm_proj_backward(dh_next, dy, lengths, t, dhr):
    """Before the projection GEMM: dhr [B,P] = dL/dh_raw = dh_next + dy for active rows, else 0;
    dh_next [B,P] in/out becomes 0 for active rows (the engine adds the recurrent GEMM)."""
    act = _active(lengths, t)
    dhr[...] = _select(act, dh_next + dy, 0)
    dh_next[...] = _select(act, 0, dh_next)


def gru_forward(gx, gh, b_hn, h_prev, lengths, t, gates, h_next, y):
    """One GRU step (PyTorch's: the reset gate multiplies the hidden projection).

    gx [B,3H] x_t @ W_ih^T + b_ih + (b_hr, b_hz, 0); gh [B,3H] h_{t-1} @ W_hh^T (no bias);
    b_hn [H] hidden bias of the n gate; h_prev [B,H].
    Writes gates [B,4H] = (r, z, n, hn) with hn = gh_n + b_hn; h_next [B,H]; y [B,H].

        r = σ(a_r)   z = σ(a_z)   n = tanh(x_n + r hn)   h = n + z (h_{t-1} - n)
    """
    H = h_prev.shape[1]
    r = sigmoid(gx[:, :H] + gh[:, :H])
    z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
    hn = gh[:, 2 * H:] + b_hn
    n = np.tanh(gx[:, 2 * H:] + r * hn)
    h = n + z * (h_prev - n)
    act = _active(lengths, t)
    gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:] = r, z, n, hn
    h_next[...] = _select(act, h, h_prev)
    y[...] = _select(act, h, 0)


def gru_backward(gates, h_prev, dh_next, dy, lengths, t, dgx, dgh):
    """BPTT through one GRU step.

    gates [B,4H] saved (r, z, n, hn); h_prev [B,H]; dh_next [B,H] in/out (dL/dh_t in, the
    direct part dh * z of dL/dh_{t-1} out); dy [B,H]. Writes dgx [B,3H] (gradient of the input
    projection: a_r, a_z, x_n) and dgh [B,3H] (of the hidden projection incl. b_hn).
    """
    H = h_prev.shape[1]
    r, z, n, hn = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    dh = dh_next + dy
    dan = dh * (1 - z) * (1 - n * n)
    dar = dan * hn * r * (1 - r)
    daz = dh * (h_prev - n) * z * (1 - z)
    act = _active(lengths, t)
    for k, d in enumerate((dar, daz, dan)):
        dgx[:, k * H:(k + 1) * H] = _select(act, d, 0)
    dgh[:, :2 * H] = dgx[:, :2 * H]
    dgh[:, 2 * H:] = _select(act, dan * r, 0)
    dh_next[...] = _select(act, dh * z, dh_next)


def rnn_forward(gx, gh, h_prev, lengths, t, h_next, y, flags):
    """One simple-RNN step: h = tanh(gx + gh) (relu with RNN_RELU).
    gx [B,H] with both biases; gh [B,H]; h_prev [B,H]; writes h_next [B,H] and y [B,H]."""
    a = gx + gh
    h = np.maximum(a, 0) if flags & RNN_RELU else np.tanh(a)
    act = _active(lengths, t)
    h_next[...] = _select(act, h, h_prev)
    y[...] = _select(act, h, 0)


def rnn_backward(h, dh_next, dy, lengths, t, dgates, flags):
    """BPTT through one RNN step. h [B,H] the state written at this step; dh_next [B,H] in/out
    (becomes 0 for active rows); dy [B,H]. Writes dgates [B,H] = dL/d(pre-activation)."""
    dh = dh_next + dy
    # relu as torch's threshold_backward: 0 where h <= 0, dh elsewhere (a NaN h passes dh)
    d = np.where(h <= 0, 0, dh) if flags & RNN_RELU else dh * (1 - h * h)
    act = _active(lengths, t)
    dgates[...] = _select(act, d, 0)
    dh_next[...] = _select(act, 0, dh_next)

"""Cell definitions: how each cell's step maps onto GEMMs and one pointwise step.

A cell knows its gate count, which buffers its forward saves for backward, and how one time
step calls the execution's pointwise ops. The loop over time lives in :mod:`gpulstm.engine`;
the pointwise math lives in :mod:`gpulstm.backends.numpy_pointwise` (reference) and in
``kernels/`` (CUDA). Per direction and layer the weights are a dict::

    w_ih [G*H, I]   w_hh [G*H, Hs]   b_ih, b_hh [G*H] (or None)
    w_hr [P, H] (LSTM with proj_size, else None)   peep [3, H] (LSTM peepholes, else None)

with ``Hs = P`` when projecting and ``H`` otherwise. State buffers ``S`` (hidden) and ``C``
(cell) have T+1 slots indexed so that the step for time t reads slot ``prev`` and writes slot
``nxt`` (``t, t+1`` forward; ``t+1, t`` for the reverse direction).
"""
from __future__ import annotations

from .backends.numpy_pointwise import LSTM_NO_FORGET, LSTM_PEEPHOLE, LSTM_PROJ, RNN_RELU


class Cell:
    name = ""
    gates = 1  # G: gate blocks in w_ih / w_hh
    has_cell_state = False

    def flags(self, w):
        return 0

    def fold_bias(self, xp, w):
        """Bias added to the whole-sequence input projection (None without bias)."""
        if w["b_ih"] is None:
            return None
        return w["b_ih"] + w["b_hh"]

    def saved_width(self, H):
        """Columns of the per-step saved gate buffer (0: nothing beyond the states)."""
        return self.gates * H


class LSTMCell(Cell):
    name = "lstm"
    gates = 4
    has_cell_state = True

    def __init__(self, forget_gate=True, peephole=False):
        self.forget_gate = forget_gate
        self.peephole = peephole

    def flags(self, w):
        f = 0 if self.forget_gate else LSTM_NO_FORGET
        if self.peephole:
            f |= LSTM_PEEPHOLE
        if w.get("w_hr") is not None:
            f |= LSTM_PROJ
        return f

    def step_forward(self, ex, w, s, t, prev, nxt, flags):
        pw, S, C = ex.pw, s["S"], s["C"]
        ex.matmul(S[prev], s["w_hh_T"], out=s["gh"])
        proj = flags & LSTM_PROJ
        # with LSTM_PROJ the kernel writes m = o*tanh(c) into M[t]; h_prev and y are unused
        h_out = s["M"][t] if proj else S[nxt]
        pw.lstm_forward(s["gx"][t], s["gh"], C[prev], S[prev], s["L"], t, s["peep"],
                        s["gates"][t], C[nxt], h_out, s["Y"][t] if not proj else h_out, flags)
        if proj:
            ex.matmul(s["M"][t], s["w_hr_T"], out=S[nxt])
            pw.lstm_proj_forward(S[nxt], S[prev], s["L"], t, s["Y"][t])

    def step_backward(self, ex, w, s, g, t, prev, nxt, flags):
        pw = ex.pw
        if flags & LSTM_PROJ:
            pw.lstm_proj_backward(g["dh"], g["dY"][t], s["L"], t, g["DHR"][t])
            ex.matmul(g["DHR"][t], w["w_hr"], out=g["dm"])
            dh_in = g["dm"]
        else:
            dh_in = g["dh"]  # unused without LSTM_PROJ
        pw.lstm_backward(s["gates"][t], s["C"][nxt], s["C"][prev], dh_in, g["dh"], g["dY"][t],
                         g["dc"], s["L"], t, s["peep"], g["dGx"][t], flags)
        ex.matmul_acc(g["dGx"][t], w["w_hh"], out=g["dh"])


class GRUCell(Cell):
    name = "gru"
    gates = 3

    def fold_bias(self, xp, w):
        # b_hr and b_hz fold into the input projection; b_hn stays inside r * (W_hn h + b_hn)
        if w["b_ih"] is None:
            return None
        H = w["b_ih"].shape[0] // 3
        b = w["b_ih"].copy()
        b[:2 * H] += w["b_hh"][:2 * H]
        return b

    def saved_width(self, H):
        return 4 * H  # r, z, n, hn

    def step_forward(self, ex, w, s, t, prev, nxt, flags):
        S = s["S"]
        ex.matmul(S[prev], s["w_hh_T"], out=s["gh"])
        ex.pw.gru_forward(s["gx"][t], s["gh"], s["b_hn"], S[prev], s["L"], t, s["gates"][t],
                          S[nxt], s["Y"][t])

    def step_backward(self, ex, w, s, g, t, prev, nxt, flags):
        ex.pw.gru_backward(s["gates"][t], s["S"][prev], g["dh"], g["dY"][t], s["L"], t,
                           g["dGx"][t], g["dGh"][t])
        ex.matmul_acc(g["dGh"][t], w["w_hh"], out=g["dh"])


class RNNCell(Cell):
    gates = 1

    def __init__(self, nonlinearity="tanh"):
        self.nonlinearity = nonlinearity
        self.name = "rnn_" + nonlinearity

    def flags(self, w):
        return RNN_RELU if self.nonlinearity == "relu" else 0

    def saved_width(self, H):
        return 0  # backward needs only the new state, already in S

    def step_forward(self, ex, w, s, t, prev, nxt, flags):
        S = s["S"]
        ex.matmul(S[prev], s["w_hh_T"], out=s["gh"])
        ex.pw.rnn_forward(s["gx"][t], s["gh"], S[prev], s["L"], t, S[nxt], s["Y"][t], flags)

    def step_backward(self, ex, w, s, g, t, prev, nxt, flags):
        ex.pw.rnn_backward(s["S"][nxt], g["dh"], g["dY"][t], s["L"], t, g["dGx"][t], flags)
        ex.matmul_acc(g["dGx"][t], w["w_hh"], out=g["dh"])

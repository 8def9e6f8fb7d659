"""Cell definitions: how each cell's step maps onto GEMMs and one pointwise step.

A cell knows its gate count, which buffers its forward and backward need beyond the ones every
cell has (:meth:`Cell.init_forward`, :meth:`Cell.init_backward`), which gradients it adds to
the whole-sequence ones (:meth:`Cell.extra_grads`) and how one time step calls the
execution's pointwise ops. The engine never asks which cell it runs: the loop over time lives
in :mod:`gpulstm.engine`;
the pointwise math lives in :mod:`gpulstm.backends.numpy_pointwise` (reference) and in
``kernels/`` (CUDA). Per direction and layer the weights are a dict::

    w_ih [G*H, I]   w_hh [G*H, Hs]   b_ih, b_hh [G*H] (or None)
    w_hr [P, H] (LSTM with proj_size, else None)   peep [3, H] (LSTM peepholes, else None)

with ``Hs = P`` when projecting and ``H`` otherwise. State buffers ``S`` (hidden) and ``C``
(cell) have T+1 slots indexed so that the step for time t reads slot ``prev`` and writes slot
``nxt`` (``t, t+1`` forward; ``t+1, t`` for the reverse direction).
"""
from __future__ import annotations

from .kernel_flags import LSTM_NO_FORGET, LSTM_PEEPHOLE, LSTM_PROJ, RNN_RELU
from .lowp import compute_dtype, store, widen


class Cell:
    name = ""
    kind = ""  # the stepwise kernels' and the cpu loop's prefix: "lstm", "gru" or "rnn"
    gates = 1  # G: gate blocks in w_ih / w_hh
    has_cell_state = False
    #: entries of the saved dict that :meth:`init_forward` adds and backward never reads
    forward_transients = ()
    #: the cell's own per-step buffers [T, ...] of the saved or gradient dict, and its own
    #: state histories [T+1, ...] (beside the engine's ``gates``, ``Y``, ``dGx``, ... and
    #: ``S``): the engine slices them to a window of steps (engine.py, "Recompute")
    step_buffers = ()
    state_buffers = ()

    # -- what the compiled kernels take (gpulstm.backends.kernel_loop binds these by name) ----
    #: the cell's struct in ``kernels/cells/`` (e.g. ``"LstmCell"``, the header with its
    #: pointwise math): the time-loop kernels (``fused_*``, ``persistent_*`` of
    #: ``kernels/fused_step.cu`` / ``persistent.cu``) are templates instantiated for it. None:
    #: the cell has no compiled kernels (it runs in the engine's stepwise loop everywhere).
    kernel_struct = None
    #: the saved-dict buffer the kernels read as the cell's [NCONST, H] constants (LSTM
    #: ``"peep"``, GRU ``"b_hn"``), or None
    kernel_constant = None
    #: argument lists of the time-loop kernels, one for every cell: names of saved / gradient
    #: buffers (``"C@prev"``: the slot of step ``prev``; slots ``t``, ``prev``, ``nxt`` and
    #: ``last``, the step processed before this one), ``konst`` (:attr:`kernel_constant`) and
    #: the int scalars ``T``, ``t``, ``B``, ``H``, ``flags``, ``reverse``, ``has`` (a step
    #: before this one exists). A buffer the cell does not have (``C``, ``dc`` without a
    #: :attr:`carried_state`, ``gates`` without saved columns, ``konst``) is passed as an empty
    #: placeholder, which the cell's struct never reads (kernels/cell_step.cuh).
    fused_forward_args = ("gx@t", "w_hh_T", "konst", "C@prev", "S@prev", "L", "t", "gh",
                          "gates@t", "C@nxt", "S@nxt", "Y@t", "B", "H", "flags")
    fused_backward_args = ("dGh@last", "has", "w_hh", "gates@t", "C@nxt", "C@prev", "S@nxt",
                           "S@prev", "dh", "dY@t", "dc", "L", "t", "konst", "dGx@t", "dGh@t",
                           "B", "H", "flags")
    persistent_forward_args = ("gx", "w_hh_T", "konst", "C", "S", "L", "T", "reverse", "gh",
                               "gates", "Y", "B", "H", "flags")
    persistent_backward_args = ("w_hh", "gates", "C", "S", "dh", "dY", "dc", "L", "T",
                                "reverse", "konst", "dGx", "dGh", "B", "H", "flags")
    #: argument lists of the compiled CPU loop's ``<kind>_forward`` / ``<kind>_backward``
    #: (``kernels/cpu/sequence.cpp``, bound by :mod:`gpulstm.backends.cpu`): buffer names as
    #: above (whole sequences), int scalars ``T``, ``B``, ``H``, ``reverse``, ``slots``,
    #: ``flags``, ``threads``, ``gates_stride``, ``window`` (the engine's window of steps);
    #: ``input`` the five arguments of the input
    #: (``gx``, or x, W_ih and the bias where the loop projects it itself, see
    #: ``loop_projects_input``); ``db`` the bias gradient the loop sums on the way
    cpu_forward_args = ("T", "B", "H", "gx", "w_hh", "konst", "L", "reverse", "slots", "S", "C",
                        "gates", "gates_stride", "Y", "flags", "threads")
    cpu_backward_args = ("T", "B", "H", "w_hh", "konst", "L", "reverse", "S", "C", "gates", "dY",
                         "dh", "dc", "dGx", "dGh", "flags", "threads")
    #: the compiled CPU loop's own functions (``<cpu_loop>_forward_f32`` & co.: "lstm", "gru",
    #: "rnn"); None: the generic loops of the cell's header, ``cell_<kernel_struct>_*``
    #: (the arguments above), which every cell with a header gets
    cpu_loop = None
    #: the CPU loop can project the input itself (no [T,B,G*H] projection buffer)
    loop_projects_input = False
    #: the state the kernels carry beside S: its [T+1,B,H] history in the saved dict and its
    #: [B,H] gradient in the gradient dict (LSTM: "C", "dc"), or None
    carried_state = None
    carried_grad = None
    #: the gradient of the recurrent pre-activations is a buffer of its own (``dGh``), not
    #: ``dGx`` (GRU: r * dn on the hidden side)
    split_dgh = False

    #: the recurrence is the GEMM h_{t-1} W_hh^T (False: the cell's own, e.g. IndRNN's
    #: elementwise u * h_{t-1}; the engine then makes no W_hh^T and no dense W_hh gradient)
    dense_recurrence = True

    #: accepts ``proj_size`` (LSTM's projection of the state, h = W_hr m)
    projects = False

    def config(self):
        """The keyword arguments that rebuild this cell: ``type(cell)(**cell.config())``."""
        return {}

    def extra_shapes(self, H, P):
        """Parameters beyond ``w_ih``, ``w_hh`` and the biases, per layer and direction, for
        hidden size ``H`` and projection size ``P`` (0: none): {short name: shape}, in the
        order they follow torch's (LSTM: ``w_hr`` (P, H), ``peep`` (3, H))."""
        return {}

    def weight_shapes(self, I, H, Hs):
        """Shapes of the input and recurrent weights of one layer and direction (input size
        ``I``, hidden size ``H``, state size ``Hs``): both faces build their parameters from
        these."""
        return {"w_ih": (self.gates * H, I), "w_hh": (self.gates * H, Hs)}

    def state_size(self, w):
        """Hs, the width of the state h the recurrence reads (P with LSTM's proj_size)."""
        return w["w_hh"].shape[1]

    def recurrent_grad(self, ex, dGh, s_prev, out=None):
        """dL/dW_hh from dGh [n*B, G*H] and the states each step read [n*B, Hs] over the n
        steps of one window: a new array, or added into ``out`` (the earlier windows' sum)
        and ``out`` returned."""
        if out is None:
            return product(ex, dGh.T, s_prev)
        ex.matmul_acc(dGh.T, s_prev, out=out)
        return out

    def kernel_constants(self, H):
        """Constant buffers of the saved dict the kernels read beside the weights: {name:
        shape} (copied into a CUDA-graph arena before each replay)."""
        return {}

    def kernels_apply(self, flags):
        """False where the options ``flags`` need the stepwise loop (no fused kernel)."""
        return self.kernel_struct is not None

    def flags(self, w):
        return 0

    def init_forward(self, ex, w, s, c0):
        """Add this cell's buffers and constants to the saved dict ``s`` of one direction's
        forward (the engine has put ``S`` [T+1,B,Hs] with its initial slot, ``x``, ``L`` and
        ``reverse`` there). ``c0`` [B,H] the initial cell state, or None."""

    def init_backward(self, ex, w, s, g, dc_n):
        """Add this cell's buffers to the gradient dict ``g`` of one direction's backward (the
        engine has put ``dY``, ``dh`` and ``dGx`` [T,B,G*H] there): ``dGh``, the gradient of
        the recurrent pre-activations, is ``dGx`` itself unless the cell says otherwise.
        ``dc_n`` [B,H] the gradient w.r.t. the final cell state, or None."""
        g["dGh"] = g["dGx"]

    def window_grads(self, ex, w, s, g):
        """Gradients of the cell's own parameters beyond w_ih, w_hh and the biases from the
        steps of one window: ``s`` and ``g`` are the saved and gradient dicts restricted to
        it (per-step buffers [n, ...], state histories [n+1, ...]); the engine adds the
        windows up in the backward's processing order: {key of ``w``: array}."""
        return {}

    def extra_grads(self, ex, w, s, g):
        """Gradients of the cell's own parameters that its backward steps accumulated
        themselves (in buffers of ``g``), once after the whole backward loop: {key of ``w``:
        array}. Gradients computed from whole-sequence buffers belong in
        :meth:`window_grads` (with recompute, no whole-sequence buffer exists)."""
        return {}

    def saved_elements(self, T, B, H, Hs):
        """Elements one direction's forward keeps for backward: S, Y, the gates (and the
        cell's own buffers)."""
        return (T + 1) * B * Hs + T * B * Hs + T * B * self.saved_width(H)

    def fold_bias(self, xp, w):
        """Bias added to the whole-sequence input projection (None without bias)."""
        if w["b_ih"] is None:
            return None
        return widen(w["b_ih"]) + widen(w["b_hh"])  # bfloat16: summed in float32

    def saved_width(self, H):
        """Columns of the per-step saved gate buffer (0: nothing beyond the states)."""
        return self.gates * H


def state_slot(s, i):
    """Where state i (0..T) of a direction's saved dict lives in ``s["S"]`` / ``s["C"]``:
    slot i of the whole history [T+1,B,*], or i % 2 in the inference ring [2,B,*]."""
    return i % s["S"].shape[0]


def zero_stride(xp, T, B, width, dt):
    """A [T,B,width] view of ONE [B,width] slot (time stride 0): what every step of an
    inference forward overwrites instead of keeping a history."""
    slot = xp.empty((1, B, width), dt)
    return xp.lib.stride_tricks.as_strided(slot, (T, B, width), (0,) + slot.strides[1:])


def product(ex, a, b):
    """a @ b [M,N] into a new array through the execution's GEMM (``a`` may be a transposed
    view)."""
    out = ex.xp.empty((a.shape[0], b.shape[1]), a.dtype)
    ex.matmul(a, b, out=out)
    return out


class LSTMCell(Cell):
    name = kind = "lstm"
    cpu_loop = "lstm"
    gates = 4
    has_cell_state = True
    forward_transients = ("w_hr_T",)
    step_buffers = ("M", "DHR")  # proj_size: m = o * tanh(c), and dL/dh before W_hr
    state_buffers = ("C",)
    kernel_struct, kernel_constant = "LstmCell", "peep"
    carried_state, carried_grad = "C", "dc"
    cpu_forward_args = ("T", "B", "H", "input", "w_hh", "L", "reverse", "slots", "S", "C", "peep",
                        "gates", "gates_stride", "Y", "flags", "threads")
    cpu_backward_args = ("T", "B", "H", "w_hh", "L", "reverse", "C", "peep", "gates", "dY", "dh",
                         "dc", "dGx", "db", "window", "flags", "threads")
    loop_projects_input = True
    projects = True

    def extra_shapes(self, H, P):
        out = {"w_hr": (P, H)} if P else {}
        if self.peephole:
            out["peep"] = (3, H)
        return out

    def kernel_constants(self, H):
        return {"peep": (3, H)}

    def kernels_apply(self, flags):
        return not flags & LSTM_PROJ  # the projection GEMM sits between two steps

    def __init__(self, forget_gate=True, peephole=False):
        self.forget_gate = forget_gate
        self.peephole = peephole

    def config(self):
        return {"forget_gate": self.forget_gate, "peephole": self.peephole}

    def flags(self, w):
        f = 0 if self.forget_gate else LSTM_NO_FORGET
        if self.peephole:
            f |= LSTM_PEEPHOLE
        if w.get("w_hr") is not None:
            f |= LSTM_PROJ
        return f

    def init_forward(self, ex, w, s, c0):
        xp, S = ex.xp, s["S"]
        T, B = s["x"].shape[0], S.shape[1]
        H = w["w_hh"].shape[0] // self.gates
        s["C"] = xp.empty(S.shape[:2] + (H,), S.dtype)  # the history, or the inference ring
        s["C"][state_slot(s, T if s["reverse"] else 0)] = c0
        s["peep"] = w["peep"] if w.get("peep") is not None else xp.zeros((3, H), S.dtype)
        if w.get("w_hr") is not None:  # proj_size: m = o * tanh(c) saved, h = m W_hr^T
            s["w_hr_T"] = ex.transposed(w["w_hr"])
            ring = S.shape[0] < T + 1  # inference: one slot, like the gates
            s["M"] = zero_stride(xp, T, B, H, S.dtype) if ring else xp.empty((T, B, H), S.dtype)

    def init_backward(self, ex, w, s, g, dc_n):
        xp, dGx = ex.xp, g["dGx"]
        T, B = dGx.shape[:2]
        H = dGx.shape[2] // self.gates
        g["dGh"] = dGx
        g["dc"] = xp.zeros((B, H), dGx.dtype) if dc_n is None else dc_n.copy()
        if w.get("w_hr") is not None:
            g["DHR"] = xp.empty((T, B, s["S"].shape[2]), dGx.dtype)
            g["dm"] = xp.empty((B, H), dGx.dtype)

    def window_grads(self, ex, w, s, g):
        out = {}
        T, B, GH = g["dGx"].shape
        H = GH // self.gates
        if w.get("w_hr") is not None:
            Hs = g["DHR"].shape[2]
            out["w_hr"] = product(ex, g["DHR"].reshape(T * B, Hs).T, s["M"].reshape(T * B, H))
        if w.get("peep") is not None:
            C, d = s["C"], g["dGx"]
            c_prev, c_new = (C[1:], C[:-1]) if s["reverse"] else (C[:-1], C[1:])
            c_prev, c_new, dt = widen(c_prev), widen(c_new), d.dtype  # bf16: f32 sums
            out["peep"] = store(ex.xp.stack([
                (widen(d[..., :H]) * c_prev).sum(axis=(0, 1)),
                (widen(d[..., H:2 * H]) * c_prev).sum(axis=(0, 1)),
                (widen(d[..., 3 * H:]) * c_new).sum(axis=(0, 1)),
            ]), dt)
        return out

    def saved_elements(self, T, B, H, Hs):
        # + C, and M when projecting
        return super().saved_elements(T, B, H, Hs) + (T + 1) * B * H + (T * B * H if Hs != H else 0)

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
    name = kind = "gru"
    cpu_loop = "gru"
    gates = 3
    kernel_struct, kernel_constant = "GruCell", "b_hn"
    split_dgh = True
    cpu_forward_args = ("T", "B", "H", "gx", "w_hh", "b_hn", "L", "reverse", "slots", "S", "gates",
                        "gates_stride", "Y", "threads")
    cpu_backward_args = ("T", "B", "H", "w_hh", "L", "reverse", "S", "gates", "dY", "dh", "dGx",
                         "dGh", "threads")

    def kernel_constants(self, H):
        return {"b_hn": (H,)}

    def init_forward(self, ex, w, s, c0):
        H = w["w_hh"].shape[0] // self.gates
        # b_hn stays inside r * (W_hn h + b_hn): the step adds it, not the projection
        s["b_hn"] = w["b_hh"][2 * H:] if w["b_hh"] is not None else ex.xp.zeros(H, s["S"].dtype)

    def init_backward(self, ex, w, s, g, dc_n):
        g["dGh"] = ex.xp.empty_like(g["dGx"])  # r * dn differs from dn on the hidden side

    def fold_bias(self, xp, w):
        # b_hr and b_hz fold into the input projection; b_hn stays inside r * (W_hn h + b_hn)
        if w["b_ih"] is None:
            return None
        H = w["b_ih"].shape[0] // 3
        b = w["b_ih"].astype(compute_dtype(w["b_ih"].dtype))  # a copy (float32 for bfloat16)
        b[:2 * H] += widen(w["b_hh"][:2 * H])
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
    kind = "rnn"
    cpu_loop = "rnn"
    gates = 1
    kernel_struct = "RnnCell"
    cpu_forward_args = ("T", "B", "H", "gx", "w_hh", "L", "reverse", "slots", "S", "Y", "flags",
                        "threads")
    cpu_backward_args = ("T", "B", "H", "w_hh", "L", "reverse", "S", "dY", "dh", "dGx", "flags",
                         "threads")

    def __init__(self, nonlinearity="tanh"):
        self.nonlinearity = nonlinearity
        self.name = "rnn_" + nonlinearity

    def config(self):
        return {"nonlinearity": self.nonlinearity}

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


class CIFGCell(LSTMCell):
    """The coupled input-forget gate LSTM (CIFG; Greff et al. 2017, "LSTM: A Search Space
    Odyssey"): the input gate is 1 - f, so three gate blocks (f, g, o) in ``w_ih``/``w_hh``::

        f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)   c = f c_{t-1} + (1 - f) g   h = o tanh(c)

    A cell brought through the plug-in alone: this class and ``kernels/cells/cifg.cuh`` (its
    pointwise math, one unit of one step) are all of it. The header gives it the fused and
    persistent kernels of the device executions (``kernel_struct``); its stepwise step is
    written here against the execution's array module (``ex.xp``); the compiled CPU loop runs
    the generic loops of its header (``cell_CifgCell_*`` in kernels/cpu/sequence.cpp).
    """
    name = kind = "cifg"
    gates = 3
    forward_transients = ()
    kernel_struct, kernel_constant = "CifgCell", None
    cpu_forward_args, cpu_backward_args = Cell.cpu_forward_args, Cell.cpu_backward_args
    cpu_loop = None  # the generic loops of its header (kernels/cpu/sequence.cpp)
    loop_projects_input = False
    projects = False  # no proj_size (nor peepholes)

    def __init__(self):
        super().__init__(forget_gate=True, peephole=False)

    def config(self):
        return {}

    def flags(self, w):
        return 0

    def kernel_constants(self, H):
        return {}

    def kernels_apply(self, flags):
        return True

    @staticmethod
    def _active(xp, L, t):
        act = t < L
        return None if bool(act.all()) else act[:, None]

    def step_forward(self, ex, w, s, t, prev, nxt, flags):
        xp, S, C = ex.xp, s["S"], s["C"]
        ex.matmul(S[prev], s["w_hh_T"], out=s["gh"])
        H = C.shape[2]
        # widen: bfloat16 buffers are read as float32 (a no-op for float32/float64)
        a = widen(s["gx"][t]) + widen(s["gh"])
        c_prev, h_prev = widen(C[prev]), widen(S[prev])
        gates = s["gates"][t]
        f = 1 / (1 + xp.exp(-a[:, :H]))
        g = xp.tanh(a[:, H:2 * H])
        o = 1 / (1 + xp.exp(-a[:, 2 * H:]))
        gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:] = f, g, o
        c = f * c_prev + (1 - f) * g
        h = o * xp.tanh(c)
        act = self._active(xp, s["L"], t)
        if act is None:
            C[nxt], S[nxt], s["Y"][t] = c, h, h
        else:
            C[nxt] = xp.where(act, c, c_prev)
            S[nxt] = xp.where(act, h, h_prev)
            s["Y"][t] = xp.where(act, h, 0)

    def step_backward(self, ex, w, s, g, t, prev, nxt, flags):
        xp = ex.xp
        gates, c, c_prev = widen(s["gates"][t]), widen(s["C"][nxt]), widen(s["C"][prev])
        H = c.shape[1]
        f, gg, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
        tc = xp.tanh(c)
        dh = widen(g["dh"]) + widen(g["dY"][t])
        dao = dh * tc * o * (1 - o)
        dc_next = widen(g["dc"])
        dc = dc_next + dh * o * (1 - tc * tc)
        daf = dc * (c_prev - gg) * f * (1 - f)
        dag = dc * (1 - f) * (1 - gg * gg)
        dcp = dc * f
        act = self._active(xp, s["L"], t)
        d = g["dGx"][t]
        for k, part in enumerate((daf, dag, dao)):
            d[:, k * H:(k + 1) * H] = part if act is None else xp.where(act, part, 0)
        if act is None:
            g["dc"][...] = dcp
            g["dh"][...] = 0
        else:
            g["dc"][...] = xp.where(act, dcp, dc_next)
            g["dh"][...] = xp.where(act, 0, g["dh"])
        ex.matmul_acc(d, w["w_hh"], out=g["dh"])


class IndRNNCell(Cell):
    """The independently recurrent network (IndRNN; Li et al. 2018, "Independently Recurrent
    Neural Network (IndRNN): Building A Longer and Deeper RNN"): each unit recurs on itself
    only, through a recurrent weight vector ``u`` [H] (``w_hh``) instead of a matrix::

        h_t = act(W_ih x_t + b_ih + b_hh + u * h_{t-1})      act = relu (default) or tanh

    No dense recurrence (``dense_recurrence = False``): the engine makes no W_hh^T and the
    gradient of ``u`` is sum_t sum_b dG_t h_{t-1}. Its header ``kernels/cells/indrnn.cuh``
    gives it the fused and persistent kernels (no recurrent product there, u is the kernels'
    constant); the stepwise step is written here against the execution's array module.
    """
    kind = "indrnn"
    gates = 1
    dense_recurrence = False
    kernel_struct, kernel_constant = "IndRnnCell", "u"

    def __init__(self, nonlinearity="relu"):
        self.nonlinearity = nonlinearity
        self.name = "indrnn_" + nonlinearity

    def config(self):
        return {"nonlinearity": self.nonlinearity}

    def flags(self, w):
        return RNN_RELU if self.nonlinearity == "relu" else 0

    def weight_shapes(self, I, H, Hs):
        return {"w_ih": (H, I), "w_hh": (H,)}

    def state_size(self, w):
        return w["w_hh"].shape[0]

    def recurrent_grad(self, ex, dGh, s_prev, out=None):
        part = store((widen(dGh) * widen(s_prev)).sum(axis=0), dGh.dtype)  # bf16: f32 sum
        if out is None:
            return part
        out += part
        return out

    def kernel_constants(self, H):
        return {"u": (H,)}

    def init_forward(self, ex, w, s, c0):
        s["u"] = w["w_hh"]

    def saved_width(self, H):
        return 0  # backward needs only the new state, already in S

    def _act(self, xp, a):
        return xp.maximum(a, 0) if self.nonlinearity == "relu" else xp.tanh(a)

    def step_forward(self, ex, w, s, t, prev, nxt, flags):
        xp, S = ex.xp, s["S"]
        h_prev = widen(S[prev])  # bfloat16 read as float32 (no-op otherwise)
        h = self._act(xp, widen(s["gx"][t]) + widen(s["u"]) * h_prev)
        act = CIFGCell._active(xp, s["L"], t)
        if act is None:
            S[nxt], s["Y"][t] = h, h
        else:
            S[nxt] = xp.where(act, h, h_prev)
            s["Y"][t] = xp.where(act, h, 0)

    def step_backward(self, ex, w, s, g, t, prev, nxt, flags):
        xp = ex.xp
        h, u = widen(s["S"][nxt]), widen(s["u"])
        dh = widen(g["dh"]) + widen(g["dY"][t])
        # torch's convention at 0 (relu) and the kernels' (gl_rnn_act_grad): NaN propagates
        da = xp.where(h <= 0, 0, dh) if self.nonlinearity == "relu" else dh * (1 - h * h)
        act = CIFGCell._active(xp, s["L"], t)
        if act is None:
            g["dGx"][t] = da
            g["dh"][...] = da * u
        else:
            g["dGx"][t] = xp.where(act, da, 0)
            g["dh"][...] = xp.where(act, da * u, g["dh"])

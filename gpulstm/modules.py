"""The public layers: ``LSTM``, ``GRU`` and ``RNN``, shaped like ``torch.nn.LSTM/GRU/RNN``.

Parameters carry PyTorch's names and shapes (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...),
so ``torch.nn.LSTM(...).state_dict()`` converted to NumPy loads as is. Training is explicit:
``forward`` saves what ``backward`` needs; ``backward`` returns dL/dx and fills ``grads``
(same keys as ``state_dict``) and ``grad_hx`` (the initial-state gradient).
"""
from __future__ import annotations

import numpy as np

from . import engine
from ._checks import check_array, check_dtype_name, check_int, check_lengths
from .backends import get_backend
from .cells import GRUCell, LSTMCell, RNNCell

_WEIGHT_NAMES = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
                 "w_hr": "weight_hr", "peep": "weight_peep"}


class _RNNBase:
    _gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, backend="auto",
                 dtype="float32", seed=None):
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.proj_size = check_int("proj_size", proj_size, 0)
        if self.proj_size and not isinstance(self, LSTM):
            raise ValueError("proj_size is supported by LSTM only")
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size must be < hidden_size={hidden_size}; got {proj_size}")
        for name, v in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool; got {type(v).__name__} {v!r}")
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        self.dropout = float(dropout)
        self.dtype = check_dtype_name(dtype)
        self.ex = get_backend(backend)
        self.backend = self.ex.name
        self.training = True
        init_seq, drop_seq = np.random.SeedSequence(seed).spawn(2)
        self._dropout_rng = np.random.default_rng(drop_seq)
        self._ctx = None
        self.record_state_grads = False  # set True to keep per-step dL/dh_t (state_grads)
        self.state_grads = None
        self.grads = None
        self.grad_hx = None
        self._params = {k: self.ex.asarray(v, self.dtype)
                        for k, v in self._init_params(np.random.default_rng(init_seq)).items()}

    # -- structure ----------------------------------------------------------------------------
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _state_size(self):
        return self.proj_size or self.hidden_size

    def _keys(self):
        """[(layer, direction, short, state_dict key, shape)] in PyTorch's order."""
        G, H, Hs, D = self._gates, self.hidden_size, self._state_size, self.num_directions
        out = []
        for layer in range(self.num_layers):
            I = self.input_size if layer == 0 else D * Hs
            for d in range(D):
                shapes = {"w_ih": (G * H, I), "w_hh": (G * H, Hs)}
                if self.bias:
                    shapes.update(b_ih=(G * H,), b_hh=(G * H,))
                shapes.update(self._extra_shapes())
                for short, shape in shapes.items():
                    key = f"{_WEIGHT_NAMES[short]}_l{layer}{'_reverse' if d else ''}"
                    out.append((layer, d, short, key, shape))
        return out

    def _extra_shapes(self):
        return {}

    def _init_params(self, rng):
        k = 1.0 / np.sqrt(self.hidden_size)
        return {key: rng.uniform(-k, k, size=shape) for _, _, _, key, shape in self._keys()}

    def _weights(self):
        """[layer][direction] -> weight dict for the engine (None for absent biases)."""
        ws = [[{"b_ih": None, "b_hh": None} for _ in range(self.num_directions)]
              for _ in range(self.num_layers)]
        for layer, d, short, key, _ in self._keys():
            ws[layer][d][short] = self._params[key]
        return ws

    def _make_cell(self):
        raise NotImplementedError

    # -- parameters ---------------------------------------------------------------------------
    def state_dict(self):
        """{PyTorch name: copy of the parameter} (arrays of the backend's module)."""
        return {key: self._params[key].copy() for _, _, _, key, _ in self._keys()}

    def load_state_dict(self, state_dict):
        """Load parameters by PyTorch name. Keys must match exactly and every shape must match;
        values are converted to the module's dtype. Nothing changes if any entry is wrong."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping; got {type(state_dict).__name__}")
        expected = {key: shape for _, _, _, key, shape in self._keys()}
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state_dict keys do not match: missing {missing}, unexpected {unexpected}")
        new = {}
        for key, shape in expected.items():
            a = _to_numpy(state_dict[key])
            if a.dtype.kind not in "fiu" or a.dtype == bool:
                raise TypeError(f"state_dict[{key!r}] must be a real numeric array; got dtype {a.dtype}")
            if a.shape != shape:
                raise ValueError(f"state_dict[{key!r}] must have shape {shape}; got {a.shape}")
            new[key] = self.ex.asarray(a, self.dtype)
        self._params.update(new)

    def parameters(self):
        """The live parameter arrays, keyed by PyTorch name (edit in place to update)."""
        return dict(self._params)

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- forward / backward -------------------------------------------------------------------
    def _check_state(self, name, a, B, size):
        shape = (self.num_layers * self.num_directions, B, size)
        return self.ex.asarray(check_array(name, self.ex.from_user(a), shape, self.dtype), self.dtype)

    def _forward(self, x, h0, c0, lengths):
        ex = self.ex
        x = check_array("x", ex.from_user(x), (None, None, self.input_size), self.dtype)
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B = x.shape[0], x.shape[1]
        if T < 1 or B < 1:
            raise ValueError(f"x must have at least one time step and one sequence; got shape {tuple(x.shape)}")
        x = ex.asarray(x, self.dtype)
        Hs, H = self._state_size, self.hidden_size
        h0 = ex.xp.zeros((self.num_layers * self.num_directions, B, Hs), self.dtype) \
            if h0 is None else self._check_state("h0", h0, B, Hs)
        if isinstance(self, LSTM):
            c0 = ex.xp.zeros((self.num_layers * self.num_directions, B, H), self.dtype) \
                if c0 is None else self._check_state("c0", c0, B, H)
        lens = np.full(B, T, np.int32) if lengths is None else check_lengths(lengths, T, B)
        lens = ex.asarray(lens, np.int32)
        cell = self._make_cell()
        need = engine.saved_bytes(cell, T, B, self.input_size, H, Hs, self.num_layers,
                                  self.num_directions, self.dtype.itemsize)
        with ex.memory_guard(need, f"{type(self).__name__} forward (T={T}, B={B}, H={H})"):
            y, h_n, c_n, ctx = engine.forward(ex, cell, self._weights(), x, h0, c0, lens,
                                              self.dropout if self.training else 0.0, self._dropout_rng,
                                              save=self.training)
        self._ctx = ctx
        self._out_shape = (T, B, self.num_directions * Hs)
        if self.batch_first:
            y = ex.xp.ascontiguousarray(y.transpose(1, 0, 2))
        return y, h_n, c_n

    def _backward(self, grad_out, grad_h_n, grad_c_n):
        if self._ctx is None:
            raise RuntimeError("backward() needs a forward() first")
        ex = self.ex
        T, B, F = self._out_shape
        want = (B, T, F) if self.batch_first else (T, B, F)
        g = check_array("grad_out", ex.from_user(grad_out), want, self.dtype)
        if self.batch_first:
            g = g.transpose(1, 0, 2)
        g = ex.asarray(g, self.dtype)
        dh_n = None if grad_h_n is None else self._check_state("grad_h_n", grad_h_n, B, self._state_size)
        dc_n = None if grad_c_n is None else self._check_state("grad_c_n", grad_c_n, B, self.hidden_size)
        dx, dh0, dc0, grads = engine.backward(ex, self._ctx, g, dh_n, dc_n, self.record_state_grads)
        self.state_grads = self._ctx.state_grads if self.record_state_grads else None
        self.grads = {key: grads[layer][d][short] for layer, d, short, key, _ in self._keys()}
        self.grad_hx = (dh0, dc0) if isinstance(self, LSTM) else dh0
        if self.batch_first:
            dx = ex.xp.ascontiguousarray(dx.transpose(1, 0, 2))
        return dx

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, backend={self.backend!r}, dtype={self.dtype.name!r})")


def _to_numpy(a):
    if hasattr(a, "get") and not isinstance(a, np.ndarray):  # CuPy
        return a.get()
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu()
    return np.asarray(a)


class LSTM(_RNNBase):
    """Long short-term memory layer(s), PyTorch's gate order (i, f, g, o).

    Extra keyword options beyond ``torch.nn.LSTM``: ``forget_bias`` (set the forget-gate bias
    at initialisation: ``bias_ih`` forget block = value, ``bias_hh`` forget block = 0),
    ``forget_gate=False`` (the 1997 cell, f = 1), ``peephole=True`` (diagonal peepholes,
    parameters ``weight_peep_l{k}`` of shape (3, H): p_i, p_f, p_o).
    """
    _gates = 4

    def __init__(self, *args, forget_bias=None, forget_gate=True, peephole=False, **kwargs):
        self.forget_gate = bool(forget_gate)
        self.peephole = bool(peephole)
        super().__init__(*args, **kwargs)
        if forget_bias is not None:
            if not self.bias:
                raise ValueError("forget_bias needs bias=True")
            H = self.hidden_size
            for key, a in self._params.items():
                if key.startswith("bias_ih"):
                    a[H:2 * H] = forget_bias
                elif key.startswith("bias_hh"):
                    a[H:2 * H] = 0

    def _extra_shapes(self):
        out = {}
        if self.proj_size:
            out["w_hr"] = (self.proj_size, self.hidden_size)
        if self.peephole:
            out["peep"] = (3, self.hidden_size)
        return out

    def _make_cell(self):
        return LSTMCell(forget_gate=self.forget_gate, peephole=self.peephole)

    def forward(self, x, hx=None, lengths=None):
        """x [T,B,I] ([B,T,I] with batch_first); hx = (h0 [L*D,B,Hs], c0 [L*D,B,H]) or None.
        Returns out [T,B,D*Hs], (h_n, c_n)."""
        if hx is None:
            h0 = c0 = None
        elif isinstance(hx, (tuple, list)) and len(hx) == 2:
            h0, c0 = hx
            if h0 is None or c0 is None:
                raise TypeError("hx must be (h0, c0) with both arrays, or None")
        else:
            raise TypeError(f"LSTM hx must be a tuple (h0, c0) or None; got {type(hx).__name__}")
        y, h_n, c_n = self._forward(x, h0, c0, lengths)
        return y, (h_n, c_n)

    __call__ = forward

    def backward(self, grad_out, grad_h_n=None, grad_c_n=None):
        """dL/dx from dL/dout (and optional dL/dh_n, dL/dc_n); fills grads and grad_hx."""
        return self._backward(grad_out, grad_h_n, grad_c_n)


class GRU(_RNNBase):
    """Gated recurrent unit layer(s), PyTorch's formulation (r, z, n; r applied to W_hn h + b_hn)."""
    _gates = 3

    def _make_cell(self):
        return GRUCell()

    def forward(self, x, hx=None, lengths=None):
        """x [T,B,I]; hx = h0 [L*D,B,H] or None. Returns out [T,B,D*H], h_n."""
        y, h_n, _ = self._forward(x, hx, None, lengths)
        return y, h_n

    __call__ = forward

    def backward(self, grad_out, grad_h_n=None, grad_c_n=None):
        if grad_c_n is not None:
            raise TypeError("grad_c_n is for LSTM only")
        return self._backward(grad_out, grad_h_n, None)


class RNN(GRU):
    """Elman RNN layer(s): h = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu).

    ``init="identity"`` gives the IRNN of Le et al. 2015 (W_hh = I, biases 0; use with relu).
    """
    _gates = 1

    def __init__(self, *args, nonlinearity="tanh", init="default", **kwargs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; got {nonlinearity!r}")
        if init not in ("default", "identity"):
            raise ValueError(f"init must be 'default' or 'identity'; got {init!r}")
        self.nonlinearity = nonlinearity
        super().__init__(*args, **kwargs)
        if init == "identity":
            for key, a in self._params.items():
                if key.startswith("weight_hh"):
                    a[...] = self.ex.xp.eye(self.hidden_size, dtype=self.dtype)
                elif key.startswith("bias"):
                    a[...] = 0

    def _make_cell(self):
        return RNNCell(self.nonlinearity)

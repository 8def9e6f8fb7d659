"""The public layers: ``LSTM``, ``GRU`` and ``RNN``, shaped like ``torch.nn.LSTM/GRU/RNN``.

Parameters carry PyTorch's names and shapes (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...),
so ``torch.nn.LSTM(...).state_dict()`` converted to NumPy loads as is. Training is explicit:
``forward`` saves what ``backward`` needs; ``backward`` returns dL/dx and fills ``grads``
(same keys as ``state_dict``) and ``grad_hx`` (the initial-state gradient).

As in torch: ``x`` may be unbatched (``(T, I)`` with states ``(L*D, H)``; ``batch_first``
does not apply), the batch may be empty (B = 0), and modules deep-copy and pickle (the
parameters and gradients as NumPy arrays, without the execution, which is re-attached on
load, and without the saved forward). A forward keeps private copies of ``x`` (padding
zeroed) and of the weights, so its backward cannot be changed by later in-place edits; a
forward or backward that raises leaves no saved forward or gradients behind.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import engine, layer, lowp
from ._checks import (check_array, check_bool, check_dropout, check_dtype_name,
                      check_nonlinearity, check_seed, host_memory_guard)
from .backends import BackendUnavailable, get_backend, with_graphs
from . import cells as _cells  # the engine's cell math (the public cells are below)
from .init import check_init, initialize
from .layer import LayerSpec, warn_dropout

# Attributes the parameters' shapes or the saved arrays depend on: fixed once built.
_FIXED = frozenset({"input_size", "hidden_size", "num_layers", "proj_size", "bias",
                    "bidirectional", "peephole", "dtype", "backend", "ex", "algo",
                    "cuda_graphs"})


def _spec_attr(name):
    return property(lambda self: getattr(self._spec, name),
                    doc=f"``{name}`` of the layer's :class:`gpulstm.layer.LayerSpec` (fixed).")


class _RNNBase:
    """The parameter holder of the NumPy/CuPy face: the layer's :class:`LayerSpec`, its
    parameters (arrays of the execution, by torch name), the execution and the last forward's
    :class:`gpulstm.layer.Reserve`. Everything else (names, shapes, checks, the forward and
    backward) is :mod:`gpulstm.layer`'s, shared with :mod:`gpulstm.torch`."""
    #: a step cell (LSTMCell, ...): names without the ``_l0`` suffix
    _step_cell = False

    input_size = _spec_attr("input_size")
    hidden_size = _spec_attr("hidden_size")
    num_layers = _spec_attr("num_layers")
    proj_size = _spec_attr("proj_size")
    bias = _spec_attr("bias")
    bidirectional = _spec_attr("bidirectional")
    num_directions = _spec_attr("num_directions")
    _state_size = _spec_attr("state_size")

    @property
    def _has_cell_state(self):
        return self._spec.has_cell_state

    def __setattr__(self, name, value):
        if name in _FIXED and "_params" in self.__dict__:
            raise AttributeError(f"{name} is fixed when the module is built (the parameters "
                                 f"depend on it); build a new {type(self).__name__} instead")
        object.__setattr__(self, name, value)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, *, backend="auto",
                 dtype="float32", seed=None, algo="auto", allow_tf32=False, cuda_graphs=False,
                 recompute=False):
        self._spec = LayerSpec(self._make_cell(), input_size, hidden_size, num_layers, bias,
                               bidirectional, proj_size, owner=type(self).__name__,
                               step=self._step_cell)
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = dropout  # validated by the property
        warn_dropout(self.dropout, self.num_layers)
        self.recompute = recompute  # validated by the property
        self.dtype = check_dtype_name(dtype)
        seed = check_seed(seed)
        # algo: the time loop (backends.kernel_loop); allow_tf32: the GEMMs' compute type
        self.ex = get_backend(backend, algo).with_tf32(check_bool("allow_tf32", allow_tf32))
        lowp.check_execution(self.ex, self.dtype)  # bfloat16 only where it runs, said now
        self.algo = algo
        self.cuda_graphs = check_bool("cuda_graphs", cuda_graphs)
        if self.cuda_graphs:  # the fused loop captured into CUDA graphs (backends.graphs)
            self.ex = with_graphs(self.ex)
        self.backend = self.ex.name
        self.training = True
        init_seq, drop_seq, self._bias_seed = np.random.SeedSequence(seed).spawn(3)
        # dropout masks: Philox stream (seed from the module seed, offset advancing per mask)
        self._dropout_stream = engine.DropoutStream(int(drop_seq.generate_state(1, np.uint64)[0]))
        self._reserve = None  # the last forward's layer.Reserve
        self._ctx_error = None  # why the last forward failed (backward's message)
        self.record_state_grads = False  # set True to keep per-step dL/dh_t (state_grads)
        self.state_grads = None
        self.grads = None
        self.grad_hx = None
        self._params = {}
        rng = np.random.default_rng(init_seq)
        for p in self._spec.params:
            nbytes = int(np.prod(p.shape, dtype=object)) * self.dtype.itemsize
            with host_memory_guard(nbytes, f"parameter {p.name} of shape {p.shape}"):
                self._params[p.name] = self.ex.asarray(self._init_param(rng, p.name, p.shape),
                                                       self.dtype)

    @property
    def allow_tf32(self):
        """Whether the float32 cuBLAS GEMMs of this module (input projection, the stepwise
        loop's recurrent products, weight and input gradients: all of them alike) may round
        their inputs to TF32 on tensor cores; False (full float32) by default. Only the
        ``cupy`` backend runs TF32 (``emulated`` imitates its rounding); ``numpy`` and ``cpu``
        compute float32 either way. May be changed at any time."""
        return self.ex.allow_tf32

    @allow_tf32.setter
    def allow_tf32(self, allow):
        object.__setattr__(self, "ex", self.ex.with_tf32(check_bool("allow_tf32", allow)))

    @property
    def recompute(self):
        """Checkpointed BPTT (like ``torch.utils.checkpoint``): False (default) keeps every
        step's gates and states for the backward; True keeps only the states at the starts of
        segments of about sqrt(T) steps, an int k segments of about k steps (rounded up to the
        engine's windows), and the backward runs each segment's forward again: O(sqrt(T))
        memory, about one more forward of time, the same gradients bit for bit. May be
        changed at any time (it applies from the next forward)."""
        return self._recompute

    @recompute.setter
    def recompute(self, value):
        engine.check_recompute(value)
        self._recompute = value

    @property
    def dropout(self):
        """Probability of zeroing each output of every layer but the last (training only)."""
        return self._dropout

    @dropout.setter
    def dropout(self, p):
        self._dropout = check_dropout(p)

    def _init_biases(self, **options):
        """Apply :func:`gpulstm.init.initialize` (forget_bias, chrono t_max, update_bias) to the
        freshly drawn parameters; nothing to do when every option is None."""
        options = {k: v for k, v in options.items() if v is not None}
        if not options:
            return
        if not self.bias:
            raise ValueError(f"{', '.join(sorted(options))} needs bias=True")
        new = initialize(self.state_dict(), self._init_mode, self.hidden_size,
                         rng=np.random.default_rng(self._bias_seed), **options)
        self.load_state_dict(new)

    # -- pickling: the execution (a process-local object) is not saved ------------------------
    def __getstate__(self):
        """Parameters (and gradients) as NumPy arrays, without the execution and without the
        saved forward (a pickled or deep-copied module needs a new forward before backward)."""
        state = self.__dict__.copy()
        ex = state.pop("ex")
        state["_allow_tf32"] = ex.allow_tf32
        state["_reserve"] = None
        state["_ctx_error"] = None
        for k in ("_params", "grads", "grad_hx", "state_grads"):
            state[k] = _map_arrays(state[k], ex.to_numpy)
        return state

    def __setstate__(self, state):
        """Re-attach the execution of the backend the module was saved with."""
        allow_tf32 = state.pop("_allow_tf32", False)
        self.__dict__.update(state)
        self.__dict__.pop("_ctx", None)  # saved before the reserve (always None in a pickle)
        self.__dict__.setdefault("_reserve", None)
        self.__dict__.setdefault("_recompute", False)  # saved before recompute existed
        if "_spec" not in state:  # saved before the LayerSpec: its fields were attributes
            d = self.__dict__
            d.pop("_key_list", None)
            d["_spec"] = LayerSpec(self._make_cell(), d.pop("input_size"), d.pop("hidden_size"),
                                   d.pop("num_layers"), d.pop("bias"), d.pop("bidirectional"),
                                   d.pop("proj_size"), owner=type(self).__name__,
                                   step=self._step_cell)
        if "_dropout_stream" not in state:  # saved before the Philox masks: seed from its Generator
            rng = self.__dict__.pop("_dropout_rng", None)
            seed = int(rng.bit_generator.random_raw()) if rng is not None else 0
            self.__dict__["_dropout_stream"] = engine.DropoutStream(seed)
        try:
            self.__dict__["ex"] = get_backend(self.backend, self.__dict__.get("algo", "auto")) \
                .with_tf32(allow_tf32)
            if self.__dict__.get("cuda_graphs"):
                self.__dict__["ex"] = with_graphs(self.ex)
        except BackendUnavailable as e:
            raise BackendUnavailable(
                f"cannot restore this {type(self).__name__}: it was saved with backend "
                f"{self.backend!r}, which cannot run here ({e}). Save its state_dict() "
                "instead and load it into a module built with a backend available here "
                "(see gpulstm.available_backends())") from e
        conv = lambda a: self.ex.asarray(a, a.dtype)  # noqa: E731
        for k in ("_params", "grads", "grad_hx", "state_grads"):
            setattr(self, k, _map_arrays(getattr(self, k), conv))

    # -- structure ----------------------------------------------------------------------------
    def _keys(self):
        """The parameters (:class:`gpulstm.layer.Param`: layer, direction, short, torch name,
        shape) in PyTorch's order."""
        return self._spec.params

    def _init_param(self, rng, key, shape):
        k = 1.0 / np.sqrt(self.hidden_size)
        return rng.uniform(-k, k, size=shape)

    def _flat(self, copy=False):
        """The parameters in the spec's order. With ``copy``, private copies: what a forward
        saves for its backward, so that updating the parameters in place before ``backward``
        cannot change the gradients of that forward."""
        ps = self._params
        return [ps[n].copy() for n in self._spec.names] if copy else \
            [ps[n] for n in self._spec.names]

    def _weights(self, copy=False):
        """[layer][direction] -> weight dict for the engine (None for absent biases)."""
        return self._spec.nest(self._flat(copy))

    def _make_cell(self):
        """A new engine cell of this layer's kind (:mod:`gpulstm.cells`), with its options."""
        raise NotImplementedError

    # -- parameters ---------------------------------------------------------------------------
    def state_dict(self):
        """{PyTorch name: copy of the parameter} (arrays of the backend's module)."""
        return {key: self._params[key].copy() for key in self._spec.names}

    def load_state_dict(self, state_dict):
        """Load parameters by PyTorch name, copying them (the module never shares memory with
        the caller's arrays). Keys must match exactly and every shape must match; values are
        converted to the module's dtype. Nothing changes if any entry is wrong."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping; got {type(state_dict).__name__}")
        expected = {p.name: p.shape for p in self._spec.params}
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state_dict keys do not match: missing {missing}, unexpected {unexpected}")
        new = {}
        for key, shape in expected.items():
            a = _to_numpy(state_dict[key])
            if (a.dtype.kind not in "fiu" and not lowp.is_bf16(a.dtype)) or a.dtype == bool:
                raise TypeError(f"state_dict[{key!r}] must be a real numeric array; got dtype {a.dtype}")
            if a.shape != shape:
                raise ValueError(f"state_dict[{key!r}] must have shape {shape}; got {a.shape}")
            new[key] = self.ex.asarray(np.array(a, dtype=self.dtype, order="C", copy=True), self.dtype)
        self._params.update(new)

    def parameters(self):
        """The live parameter arrays, keyed by PyTorch name (edit in place to update)."""
        return dict(self._params)

    def train(self, mode=True):
        self.training = check_bool("mode", mode)
        return self

    def eval(self):
        return self.train(False)

    # -- forward / backward -------------------------------------------------------------------
    @property
    def _ctx(self):
        """The engine context inside the last forward's reserve (None: none saved)."""
        r = self._reserve
        return None if r is None else (r.ctx if r.ctx is not None else _EMPTY_BATCH)

    @_ctx.setter
    def _ctx(self, value):
        if value is not None:
            raise ValueError("only None (drop the saved forward) may be assigned to _ctx")
        self._reserve = None

    def _state(self, name, a, which, B, batched):
        """A state (or state gradient) given by the user: checked by the spec, with the batch
        axis for unbatched input, as an array of the execution."""
        a = self.ex.from_user(_no_autograd(name, a))
        self._spec.check_state(name, a, which, B, batched, self.dtype)
        return self.ex.asarray(a if batched else a[:, None, :], self.dtype)

    def _forward(self, x, h0, c0, lengths):
        self._ctx = None  # a failed forward leaves no saved forward behind
        self._ctx_error = None
        try:
            return self._forward_impl(x, h0, c0, lengths)
        except BaseException as e:
            self._ctx_error = f"{type(e).__name__}: {e}"
            raise

    def _forward_impl(self, x, h0, c0, lengths):
        ex, spec = self.ex, self._spec
        x = ex.from_user(_no_autograd("x", x))
        batched, T, B = spec.check_input("x", x, self.dtype, self.batch_first)
        if not batched:  # (T, I): one sequence, batch_first does not apply (as in torch)
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        h0 = None if h0 is None else self._state("h0", h0, "h", B, batched)
        c0 = None if c0 is None or not spec.has_cell_state else \
            self._state("c0", c0, "c", B, batched)
        lens = spec.check_lengths(lengths, T, B)
        # private weight copies only for a backward to read (inference saves nothing: at
        # B=32, H=256 the copy was 1.5 % of a forward)
        y, h_n, c_n, self._reserve = layer.forward(
            ex, spec, self._flat(copy=self.training), x, h0, c0, lens,
            dropout=self.dropout if self.training else 0.0, rng=self._dropout_stream,
            save=self.training, recompute=self.recompute)
        self._out_shape = (T, B, spec.output_size)
        self._unbatched = not batched
        if not batched:
            return y[:, 0], h_n[:, 0], (c_n[:, 0] if c_n is not None else None)
        if self.batch_first:
            y = ex.xp.ascontiguousarray(y.transpose(1, 0, 2))
        return y, h_n, c_n

    def _backward(self, grad_out, grad_h_n, grad_c_n):
        self.grads = self.grad_hx = self.state_grads = None  # a failed backward leaves none
        if self._reserve is None:
            why = f"; the last forward() failed with {self._ctx_error}" if self._ctx_error else ""
            raise RuntimeError(f"backward() needs a successful forward() first{why}")
        ex, spec = self.ex, self._spec
        T, B, F = self._out_shape
        batched = not self._unbatched
        want = (B, T, F) if batched and self.batch_first else (T, B, F) if batched else (T, F)
        g = check_array("grad_out", ex.from_user(_no_autograd("grad_out", grad_out)), want,
                        self.dtype)
        if not batched:
            g = g[:, None, :]
        elif self.batch_first:
            g = g.transpose(1, 0, 2)
        g = ex.asarray(g, self.dtype)
        dh_n = None if grad_h_n is None else self._state("grad_h_n", grad_h_n, "h", B, batched)
        dc_n = None if grad_c_n is None else self._state("grad_c_n", grad_c_n, "c", B, batched)
        record = check_bool("record_state_grads", self.record_state_grads)
        dx, dh0, dc0, flat, state_grads = layer.backward(ex, self._reserve, g, dh_n, dc_n, record)
        if not batched:
            dx, dh0 = dx[:, 0], dh0[:, 0]
            dc0 = dc0[:, 0] if dc0 is not None else None
        elif self.batch_first:
            dx = ex.xp.ascontiguousarray(dx.transpose(1, 0, 2))
        self.state_grads = state_grads
        self.grads = dict(zip(spec.names, flat))
        self.grad_hx = (dh0, dc0) if spec.has_cell_state else dh0
        return dx

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, backend={self.backend!r}, dtype={self.dtype.name!r})")




_EMPTY_BATCH = "empty batch"  # what _ctx shows after a forward of B = 0


def _map_arrays(obj, f):
    """``obj`` (None, an array, or dicts/lists/tuples of them) with every array replaced by f(a)."""
    if obj is None or isinstance(obj, (str, bool, numbers.Number)):
        return obj
    if isinstance(obj, dict):
        return {k: _map_arrays(v, f) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_arrays(v, f) for v in obj)
    return f(obj)


def _to_numpy(a):
    if hasattr(a, "get") and not isinstance(a, np.ndarray):  # CuPy
        return a.get()
    if hasattr(a, "detach"):  # torch
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":  # no NumPy dtype: widen exactly to float32
            a = a.float()
    return np.asarray(a)


def _no_autograd(name, a):
    """``a`` unchanged, unless it is a torch tensor that requires grad: gpulstm does not take
    part in torch's autograd, so using it silently would cut the caller's graph."""
    if getattr(a, "requires_grad", False) and hasattr(a, "detach"):
        raise TypeError(f"{name} is a torch tensor that requires grad; gpulstm computes gradients "
                        f"with backward(), not through torch's autograd: pass {name}.detach()")
    return a


class LSTM(_RNNBase):
    """Long short-term memory layer(s), PyTorch's gate order (i, f, g, o).

    Extra keyword options beyond ``torch.nn.LSTM``: ``forget_bias`` (set the forget-gate bias
    at initialisation: ``bias_ih`` forget block = value, ``bias_hh`` forget block = 0),
    ``init="chrono"`` with ``t_max=T`` (Tallec & Ollivier 2018: b_f ~ log U[1, T - 1],
    b_i = -b_f, drawn from the module seed; :mod:`gpulstm.init`), ``forget_gate=False`` (the
    1997 cell, f = 1), ``peephole=True`` (diagonal peepholes, parameters ``weight_peep_l{k}``
    of shape (3, H): p_i, p_f, p_o).
    """
    _init_mode = "LSTM"  # gpulstm.init's mode for forget_bias / chrono

    def __init__(self, *args, forget_bias=None, init="default", t_max=None, forget_gate=True,
                 peephole=False, **kwargs):
        self.forget_gate = check_bool("forget_gate", forget_gate)
        self.peephole = check_bool("peephole", peephole)
        t_max = check_init(init, t_max, ("default", "chrono"))
        super().__init__(*args, **kwargs)
        self._init_biases(forget_bias=forget_bias, t_max=t_max)

    def _make_cell(self):
        return _cells.LSTMCell(forget_gate=self.forget_gate, peephole=self.peephole)

    def forward(self, x, hx=None, lengths=None):
        """x [T,B,I] ([B,T,I] with batch_first); hx = (h0 [L*D,B,Hs], c0 [L*D,B,H]) or None.
        Returns out [T,B,D*Hs], (h_n, c_n). Unbatched: x [T,I], h0 [L*D,Hs], c0 [L*D,H] give
        out [T,D*Hs] and h_n, c_n without the batch axis."""
        if hx is None:
            h0 = c0 = None
        elif isinstance(hx, (tuple, list)):
            if len(hx) != 2:
                raise TypeError(f"LSTM hx must be a tuple (h0, c0) or None: expected a tuple of "
                                f"2 arrays (h0, c0), got {len(hx)}")
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


class CIFG(_RNNBase):
    """The coupled input-forget gate LSTM (Greff et al. 2017): an LSTM whose input gate is
    ``1 - f``, gate order (f, g, o), so ``weight_ih_l{k}`` is (3H, I) and ``weight_hh_l{k}``
    (3H, H). Interface and state as :class:`LSTM` (hx = (h0, c0); returns (out, (h_n, c_n)));
    no projection, peepholes or bias initialisation options. Its fused and persistent device
    kernels and its compiled cpu loop come from its cell header (kernels/cells/cifg.cuh)."""

    def _make_cell(self):
        return _cells.CIFGCell()

    forward = LSTM.forward
    __call__ = forward
    backward = LSTM.backward


class GRU(_RNNBase):
    """Gated recurrent unit layer(s), PyTorch's formulation (r, z, n; r applied to W_hn h + b_hn).

    Extra keyword option beyond ``torch.nn.GRU``: ``update_bias`` (the update-gate block of
    ``bias_ih`` at initialisation, that of ``bias_hh`` 0; > 0 makes the units keep h longer,
    see :mod:`gpulstm.init`)."""
    _init_mode = "GRU"  # gpulstm.init's mode for update_bias

    def __init__(self, *args, update_bias=None, **kwargs):
        if update_bias is not None and self._init_mode != "GRU":
            raise TypeError(f"update_bias is a GRU option; {type(self).__name__} has no update "
                            "gate")
        super().__init__(*args, **kwargs)
        self._init_biases(update_bias=update_bias)

    def _make_cell(self):
        return _cells.GRUCell()

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

    Positional arguments in torch's order: ``RNN(input_size, hidden_size, num_layers,
    nonlinearity, bias, batch_first, dropout, bidirectional)``.
    ``init="identity"`` gives the IRNN of Le et al. 2015 (W_hh = I, biases 0; use with relu).
    """
    _init_mode = None  # no bias option

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, init="default", **kwargs):
        check_nonlinearity(nonlinearity)
        if not isinstance(init, str) or init not in ("default", "identity"):
            raise ValueError(f"init must be 'default' or 'identity'; got {init!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, **kwargs)
        if init == "identity":
            for key, a in self._params.items():
                if key.startswith("weight_hh"):
                    a[...] = self.ex.xp.eye(self.hidden_size, dtype=self.dtype)
                elif key.startswith("bias"):
                    a[...] = 0

    def _make_cell(self):
        return _cells.RNNCell(self.nonlinearity)


class IndRNN(GRU):
    """Independently recurrent layer(s) (IndRNN; Li et al. 2018): each unit recurs on itself
    through a recurrent weight vector, h = act(W_ih x + b_ih + u * h_{t-1} + b_hh), act relu
    (default) or tanh. Parameters as :class:`RNN`'s except ``weight_hh_l{k}``: the vector u of
    shape (H,), not an (H, H) matrix; all drawn from U(-1/sqrt(H), 1/sqrt(H)) like torch's
    RNN. Interface and state as :class:`RNN` (hx = h0; returns (out, h_n)).

    Positional arguments as ``RNN``: ``IndRNN(input_size, hidden_size, num_layers,
    nonlinearity, bias, batch_first, dropout, bidirectional)``.
    """
    _init_mode = None  # no bias option

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="relu", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, **kwargs):
        check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, **kwargs)

    def _make_cell(self):
        return _cells.IndRNNCell(self.nonlinearity)


# -- step cells -------------------------------------------------------------------------------
class _StepCell(_RNNBase):
    """One time step per call, shaped like ``torch.nn.LSTMCell/GRUCell/RNNCell``: parameters
    ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), ``bias_ih``, ``bias_hh`` (G*H) (torch's
    cell names: a torch cell's ``state_dict`` converted to NumPy loads as is). ``forward``
    takes x [B, I] (or [I] unbatched) and the state [B, H] (or [H]); ``backward`` takes the
    gradient of the new state(s), returns dL/dx and fills ``grads`` and ``grad_hx`` (the
    gradient of the state passed in). Each step is a sequence of length 1 through the same
    engine as the layers; as they, a cell keeps what its last forward needs for backward."""
    _step_cell = True

    def __init__(self, input_size, hidden_size, bias=True, *, backend="auto", dtype="float32",
                 seed=None, allow_tf32=False):
        super().__init__(input_size, hidden_size, 1, bias, backend=backend, dtype=dtype,
                         seed=seed, allow_tf32=allow_tf32)

    def _user_state(self, name, a, want):
        """A state-shaped array given by the user, checked against its own shape ``want``
        ((B, H) or (H,)), with the layer axis the sequence engine wants in front."""
        a = self.ex.from_user(_no_autograd(name, a))
        return check_array(name, a, want, self.dtype)[None]

    def _step(self, x, h, c):
        x = self.ex.from_user(_no_autograd("x", x))
        I, H = self.input_size, self.hidden_size
        if getattr(x, "ndim", None) not in (1, 2):
            raise ValueError(f"{type(self).__name__}: x must be 2-D (B, {I}) or 1-D ({I},) "
                             f"unbatched; got shape {tuple(getattr(x, 'shape', ()))}")
        want = (x.shape[0], H) if x.ndim == 2 else (H,)
        names = ("hx[0]", "hx[1]") if self._has_cell_state else ("hx", None)
        h = None if h is None else self._user_state(names[0], h, want)
        c = None if c is None else self._user_state(names[1], c, want)
        _, h_n, c_n = self._forward(x[None], h, c, None)
        return h_n[0], (None if c_n is None else c_n[0])

    def _step_backward(self, grad_h, grad_c):
        if self._ctx is None:
            return self._backward(None, None, None)  # raises: backward needs a forward
        _, B, H = self._out_shape
        want = (H,) if self._unbatched else (B, H)
        gh = self._user_state("grad_h", grad_h, want)
        gc = None if grad_c is None else self._user_state("grad_c", grad_c, want)
        dx = self._backward(self.ex.xp.zeros((1, *want), self.dtype), gh, gc)
        g = self.grad_hx
        self.grad_hx = (g[0][0], g[1][0]) if self._has_cell_state else g[0]
        return dx[0]

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, bias={self.bias}, "
                f"backend={self.backend!r}, dtype={self.dtype.name!r})")


class LSTMCell(_StepCell):
    """One LSTM step (torch.nn.LSTMCell's math and gate order i, f, g, o):
    ``h, c = cell(x, (h, c))``; ``dx = cell.backward(grad_h, grad_c)`` fills ``grads`` and
    ``grad_hx = (dL/dh, dL/dc)`` of the state passed in."""
    def _make_cell(self):
        return _cells.LSTMCell()

    def forward(self, x, hx=None):
        """x [B,I] (or [I]); hx = (h [B,H], c [B,H]) or None (zeros). Returns (h', c')."""
        if hx is None:
            hx = (None, None)
        elif not (isinstance(hx, (tuple, list)) and len(hx) == 2) or any(a is None for a in hx):
            raise TypeError(f"LSTMCell hx must be a tuple (h, c) of two arrays or None; got "
                            f"{type(hx).__name__}")
        return self._step(x, hx[0], hx[1])

    __call__ = forward

    def backward(self, grad_h, grad_c=None):
        """dL/dx from dL/dh' (and dL/dc'); fills grads and grad_hx."""
        return self._step_backward(grad_h, grad_c)


class GRUCell(_StepCell):
    """One GRU step (torch.nn.GRUCell's math): ``h = cell(x, h)``; ``dx = cell.backward(grad_h)``
    fills ``grads`` and ``grad_hx`` (dL/dh of the state passed in)."""
    def _make_cell(self):
        return _cells.GRUCell()

    def forward(self, x, hx=None):
        """x [B,I] (or [I]); hx = h [B,H] or None (zeros). Returns h'."""
        return self._step(x, hx, None)[0]

    __call__ = forward

    def backward(self, grad_h):
        """dL/dx from dL/dh'; fills grads and grad_hx."""
        return self._step_backward(grad_h, None)


class RNNCell(GRUCell):
    """One Elman step, h' = tanh(W_ih x + b_ih + W_hh h + b_hh) (or relu), as
    torch.nn.RNNCell (arguments in its order: input_size, hidden_size, bias, nonlinearity)."""
    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", **kwargs):
        check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, **kwargs)

    def _make_cell(self):
        return _cells.RNNCell(self.nonlinearity)

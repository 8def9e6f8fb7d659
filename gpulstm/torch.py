"""Drop-in ``torch.nn.LSTM``, ``GRU`` and ``RNN`` running on gpulstm's engine.

    import gpulstm.torch as gt
    lstm = gt.LSTM(16, 32, num_layers=2, batch_first=True)   # was: torch.nn.LSTM(...)

The classes are ``torch.nn.Module`` subclasses with torch's constructor signature, parameter
names, shapes and initialisation (``torch.manual_seed`` gives the same weights as torch.nn, and
``state_dict`` loads both ways). ``forward(input, hx=None)`` takes what torch takes (a tensor,
``batch_first``, unbatched 2-D input, or a ``PackedSequence``) and returns what torch returns.

Autograd: every call goes through its own ``torch.autograd.Function`` that runs
:func:`gpulstm.engine.forward` and, on backward, :func:`gpulstm.engine.backward` (BPTT).
What the backward needs is saved through ``ctx.save_for_backward``, so it is freed after the
backward, checked against in-place edits like any torch tensor, and several forwards can
precede one backward. Under ``torch.no_grad()`` / ``torch.inference_mode()`` nothing is kept
after the call. Double backward (``create_graph=True`` through the layer) raises.

``torch.compile``: a layer or cell call traces as the registered operators ``gpulstm::forward``
and ``gpulstm::backward`` (no graph break, ``fullgraph=True`` works). ``torch.onnx.export``: LSTM,
GRU and RNN layers are exported as torch's own RNN operators with the same weights, which the
exporters write as ONNX's LSTM / GRU / RNN; the step cells as torch's step operators.

Devices: CPU tensors run on the compiled ``cpu`` backend (``numpy`` where it cannot build, as
``backend="auto"`` elsewhere) and cross as zero-copy views
(``Tensor.numpy()`` / ``torch.from_numpy``); CUDA tensors run on the ``cupy`` backend, crossing
through DLPack without a copy, on the tensor's device and torch's current stream. An explicit
``backend=`` ("numpy", "cpu", "emulated", "cupy") overrides the choice; tensors on the other
side are then copied there and the results copied back to the input's device. The GEMMs use TF32 as
torch's own matmuls do: when ``torch.backends.cuda.matmul.allow_tf32`` is set (off by default;
read at every forward; it matters on the cupy backend only).

float32, float64 and bfloat16 (storage; float32 compute, on the cpu/numpy backends) are
supported. ``import gpulstm`` does not import this module (nor
torch); ``import gpulstm.torch`` does.
"""
from __future__ import annotations

if __name__ == "torch":  # pragma: no cover - only when gpulstm/ itself is on sys.path
    raise ImportError(
        "gpulstm/torch.py was imported as the top-level module 'torch' because the gpulstm/ "
        "directory is on sys.path (a script inside gpulstm/ was run by its path); run it as "
        "'python -m gpulstm.<name>' instead")

import ast
import contextlib
import functools
import math
import itertools
import weakref
from typing import Optional

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import layer, lowp
from ._checks import check_array, check_bool, check_dropout, check_dtype_name, check_nonlinearity
from .backends import BackendUnavailable, get_backend, with_graphs
from .backends.kernel_loop import check_algo
from . import cells as _cells  # the engine's cell math (not torch's public cell modules)
from .init import check_init, initialize
from .layer import LayerSpec, Shaped, warn_dropout
from .layer import check_recompute as engine_check_recompute

__all__ = ["LSTM", "GRU", "RNN", "CIFG", "IndRNN", "LSTMCell", "GRUCell", "RNNCell"]

_DOUBLE_BACKWARD = (
    "gpulstm.torch: double backward (a gradient of a gradient, create_graph=True) through "
    "gpulstm's LSTM/GRU/RNN is not supported: their BPTT runs in gpulstm's engine, outside "
    "autograd. Use torch.nn.LSTM/GRU/RNN where higher-order gradients are needed.")


# -- tensors <-> the execution's arrays -----------------------------------------------------------
class _Bridge:
    """Moves tensors of ``device`` to arrays of the execution ``ex`` and back.

    Zero-copy whenever the memory already lies where the execution computes: CPU tensors with
    a host execution (``Tensor.numpy()`` / ``torch.from_numpy``), CUDA tensors with the cupy
    execution (DLPack). Otherwise one copy each way (an explicit ``backend=`` on the other
    device)."""

    def __init__(self, ex, device):
        self.ex, self.device = ex, device
        self.host = ex.xp is np

    def array(self, t):
        if t is None:
            return None
        t = t.detach()
        if t.dtype == torch.bfloat16:  # NumPy has no bf16: the same bits as ml_dtypes'
            if not self.host:
                lowp.check_execution(self.ex, lowp.bfloat16())  # cupy: refused, with the reason
            t = t if t.device.type == "cpu" else t.cpu()
            return t.view(torch.int16).numpy().view(lowp.bfloat16())
        if self.host:
            return (t if t.device.type == "cpu" else t.cpu()).numpy()
        if t.device.type == "cuda":
            return self.ex.xp.from_dlpack(t)
        return self.ex.xp.asarray(t.numpy())  # host tensor, explicit backend="cupy": to the GPU

    def tensor(self, a, move=True):
        """The array as a tensor without a copy; with ``move``, on the inputs' device (saved
        activations stay where the execution computes)."""
        if self.host and lowp.is_bf16(a.dtype):  # ml_dtypes' bf16 -> torch's, no copy
            t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(a) if self.host else torch.from_dlpack(a)
        return t if not move or t.device == self.device else t.to(self.device)

    @contextlib.contextmanager
    def scope(self):
        """CUDA tensors on the cupy execution: make the tensor's device current and run CuPy
        on torch's current stream of that device (kernels, GEMMs, DLPack hand-overs)."""
        if self.host or self.device.type != "cuda":
            yield
            return
        cp, idx = self.ex.xp, self.device.index
        stream = torch.cuda.current_stream(self.device)
        with cp.cuda.Device(idx), cp.cuda.ExternalStream(stream.cuda_stream, idx):
            yield


class _TorchUniform:
    """The engine's dropout masks (``mask(shape, p, dtype)``: 1 / (1 - p) where kept, 0
    elsewhere, all 0 for p = 1) drawn from torch's generator of the tensors' device, in torch:
    ``torch.manual_seed`` reproduces them. Uniforms in the masks' own precision (float32 for
    float32 and bfloat16 layers): a third cheaper than float64 ones (0.30 vs 0.43 ms for the
    word-LM example's [35, 20, 128] mask, 1 thread)."""

    def __init__(self, bridge):
        self.bridge = bridge

    def mask(self, shape, p, dtype):
        dev = self.bridge.device if self.bridge.device.type == "cuda" else "cpu"
        tdt = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
        keep = torch.rand(tuple(shape), dtype=tdt, device=dev) >= p
        m = keep.to(tdt).mul_(1.0 / (1.0 - p) if p < 1 else 0.0)  # p = 1 zeroes all (torch)
        return self.bridge.ex.asarray(self.bridge.array(m), dtype)


def _op_key(module):
    """What a forward of ``module`` needs beyond its tensors, as one string (an argument the
    registered operators take): the layer's spec (:meth:`gpulstm.layer.LayerSpec.key`),
    backend and algo. (The dropout probability travels as a number: torch.compile may trace
    a float attribute as a symbolic value.)"""
    return repr((module._spec.key(), module.backend, module.algo, module.recompute))


@functools.lru_cache(maxsize=256)
def _parse_key(key):
    spec_key, backend, algo, recompute = ast.literal_eval(key)
    return LayerSpec.from_key(spec_key), backend, algo, recompute


class _Call:
    """The fixed arguments of one forward: execution, layer spec, lengths, dropout."""

    def __init__(self, key, device, lengths, dropout, ex=None):
        self.spec, backend, algo, self.recompute = _parse_key(key)
        self.dropout = dropout
        self.ex = _execution(backend, algo, device) if ex is None else ex
        self.bridge = _Bridge(self.ex, device)
        self.lengths = lengths  # NumPy int32 [B]

    def forward(self, x, h0, c0, weights, save=True):
        """Tensors in, tensors out: (y, h_n, c_n or None, layer.Reserve). Call inside
        ``self.bridge.scope()``."""
        b = self.bridge
        y, h_n, c_n, reserve = layer.forward(
            self.ex, self.spec, [b.array(w) for w in weights], b.array(x), b.array(h0),
            b.array(c0), self.lengths, dropout=self.dropout,
            rng=_TorchUniform(b) if self.dropout else None, save=save, recompute=self.recompute)
        return b.tensor(y), b.tensor(h_n), None if c_n is None else b.tensor(c_n), reserve

    def backward(self, reserve, dy, dh_n, dc_n):
        """(dx, dh0, dc0 or None, flat weight gradients) as arrays of the execution."""
        b = self.bridge
        return layer.backward(self.ex, reserve, b.array(dy), b.array(dh_n), b.array(dc_n))[:4]


def _once_differentiable(fn):
    """Like ``torch.autograd.function.once_differentiable``, with gpulstm's message."""
    try:
        from torch._C import _functions
        delayed_error = _functions.DelayedError
    except (ImportError, AttributeError):  # pragma: no cover - older/newer torch internals
        return torch.autograd.function.once_differentiable(fn)

    def wrapper(ctx, *grads):
        with torch.no_grad():
            out = fn(ctx, *grads)
        # create_graph=True runs the backward with grad mode on: the gradients returned must
        # then carry the error, whether or not the incoming grads require grad (a gradient
        # penalty of y.sum() gets constant ones), or their graph would be silently empty
        if not torch.is_grad_enabled():
            return out
        err = delayed_error(_DOUBLE_BACKWARD.encode(), len(out))

        def fake(v):
            if v is None:
                return v
            v = v.detach()
            v.requires_grad = True
            return v

        res = err(*[fake(v) for v in out])
        return res if isinstance(res, tuple) else (res,)

    return wrapper


class _EngineFunction(torch.autograd.Function):
    """Inputs ``(call, x [T,B,I], h0, c0 or None, *weights)``; outputs ``(y, h_n[, c_n])``."""

    @staticmethod
    def forward(ctx, call, x, h0, c0, *weights):
        with call.bridge.scope():
            y, h_n, c_n, reserve = call.forward(x, h0, c0, weights)
            token, arrays = reserve.pack(call.ex.xp)  # opaque: the layer's reserve space
            saved = [call.bridge.tensor(a, move=False) for a in arrays]
        ctx.call, ctx.token, ctx.n_weights = call, token, len(weights)
        # x and the weights too: the engine keeps views of them, so torch's version counters
        # must catch an in-place edit before the backward
        ctx.save_for_backward(x, *weights, *saved)
        ctx.set_materialize_grads(False)
        return (y, h_n) if c_n is None else (y, h_n, c_n)

    @staticmethod
    @_once_differentiable
    def backward(ctx, dy, dh_n, dc_n=None):
        call, n = ctx.call, ctx.n_weights
        tensors = ctx.saved_tensors
        x, weights, saved = tensors[0], tensors[1:1 + n], tensors[1 + n:]
        b = call.bridge
        with b.scope():
            reserve = layer.Reserve.unpack(ctx.token, [b.array(t) for t in saved],
                                           [b.array(w) for w in weights])
            if dy is None:
                dy = x.new_zeros(x.shape[0], x.shape[1], call.spec.output_size)
            dx, dh0, dc0, flat = call.backward(reserve, dy, dh_n, dc_n)
            need = ctx.needs_input_grad
            out = [None,
                   b.tensor(dx) if need[1] else None,
                   b.tensor(dh0) if need[2] else None,
                   b.tensor(dc0) if dc0 is not None and need[3] else None]
            out += [b.tensor(g) if need[4 + i] else None for i, g in enumerate(flat)]
        return tuple(out)


def _execution(name, algo, device):
    """The execution for tensors on ``device``: the backend ``name`` if given, else the fastest
    correct one there (cpu, or numpy where it cannot build; cupy on CUDA), as "auto"."""
    if name is not None and name != "auto":
        ex = get_backend(name, algo)
    elif device.type == "cpu":  # the compiled loops where they build here, as "auto"
        try:
            ex = get_backend("cpu", algo)
        except BackendUnavailable:  # its reason is kept: no rebuild is tried per call
            ex = get_backend("numpy", algo)
    elif device.type == "cuda":
        ex = get_backend("cupy", algo)
    else:
        raise ValueError(f"gpulstm.torch runs CPU tensors (cpu or numpy backend) and "
                         f"CUDA tensors (cupy backend); got tensors on {device}")
    # TF32 for the GEMMs as torch's matmuls: torch.backends.cuda.matmul.allow_tf32
    return ex.with_tf32(bool(torch.backends.cuda.matmul.allow_tf32))


# -- registered operators (torch.compile) ---------------------------------------------------------
# The same forward and backward as gpulstm::forward / gpulstm::backward, whose fake kernels give
# the output shapes without running anything, so torch.compile traces a gpulstm layer as one
# node (no graph break) and autograd calls the backward operator. The engine's saved context
# stays in _SAVED under a key; the forward returns the key as a one-element int64 "handle"
# tensor that autograd saves for the backward, and the entry goes when that tensor is freed
# (after the backward, or with the graph), as a saved tensor would. Eager calls keep
# _EngineFunction.
_SAVED = {}
_KEYS = itertools.count()


def _keep(call, reserve):
    key = next(_KEYS)
    _SAVED[key] = (call, reserve)
    handle = torch.tensor([key], dtype=torch.int64)
    weakref.finalize(handle, _SAVED.pop, key, None)
    return handle


@torch.library.custom_op("gpulstm::forward", mutates_args=())
def _op_forward(spec: str, x: torch.Tensor, h0: torch.Tensor, c0: Optional[torch.Tensor],
                weights: list[torch.Tensor], lengths: torch.Tensor, dropout: float, save: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, h_n, c_n (empty without a cell state), handle of the saved context (-1 unless
    ``save``))."""
    call = _Call(spec, x.device, lengths.numpy().astype(np.int32), dropout)
    with call.bridge.scope():
        y, h_n, c_n, reserve = call.forward(x, h0, c0, weights, save=save)
    handle = _keep(call, reserve) if save else torch.tensor([-1], dtype=torch.int64)
    c_n = x.new_empty(0) if c_n is None else c_n
    # outputs must not alias each other or the inputs (views of the engine's buffers may)
    return tuple(t.clone() if t._base is not None else t for t in (y, h_n, c_n)) + (handle,)


@_op_forward.register_fake
def _(spec, x, h0, c0, weights, lengths, dropout, save):
    layer_spec = _parse_key(spec)[0]
    T, B = x.shape[0], x.shape[1]
    c_n = x.new_empty(layer_spec.state_shape("c", B)) if c0 is not None else x.new_empty(0)
    return (x.new_empty(T, B, layer_spec.output_size), x.new_empty(layer_spec.state_shape("h", B)), c_n,
            torch.empty(1, dtype=torch.int64, device="cpu"))


@torch.library.custom_op("gpulstm::backward", mutates_args=())
def _op_backward(handle: torch.Tensor, x: torch.Tensor, has_c0: bool, weights: list[torch.Tensor],
                 dy: torch.Tensor, dh_n: torch.Tensor, dc_n: Optional[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(dx, dh0, dc0 (empty without a cell state), gradients of ``weights``)."""
    call, reserve = _SAVED[int(handle[0])]
    b = call.bridge
    with b.scope():
        dx, dh0, dc0, flat = call.backward(reserve, dy, dh_n, dc_n)
        return (b.tensor(dx), b.tensor(dh0), b.tensor(dc0) if has_c0 else x.new_empty(0),
                [b.tensor(g) for g in flat])


@_op_backward.register_fake
def _(handle, x, has_c0, weights, dy, dh_n, dc_n):
    return (torch.empty_like(x), torch.empty_like(dh_n),
            torch.empty_like(dc_n) if has_c0 else x.new_empty(0), [torch.empty_like(w) for w in weights])


def _op_setup_context(ctx, inputs, output):
    spec, x, h0, c0, weights, lengths, dropout, save = inputs
    ctx.has_c0 = c0 is not None
    # x and the weights too: the engine keeps views of them (version counters, as eager)
    ctx.save_for_backward(output[3], x, *weights)


def _op_autograd_backward(ctx, dy, dh_n, dc_n, _dhandle):
    handle, x, *weights = ctx.saved_tensors
    dx, dh0, dc0, dw = torch.ops.gpulstm.backward(handle, x, ctx.has_c0, weights, dy, dh_n,
                                                  dc_n if ctx.has_c0 else None)
    return None, dx, dh0, dc0 if ctx.has_c0 else None, dw, None, None, None


_op_forward.register_autograd(_op_autograd_backward, setup_context=_op_setup_context)


def _op_backward_backward(ctx, *grads):
    raise RuntimeError(_DOUBLE_BACKWARD)


_op_backward.register_autograd(_op_backward_backward, setup_context=lambda ctx, inputs, output: None)


# -- the modules ----------------------------------------------------------------------------------
def _shaped(name, t):
    """A tensor's shape and NumPy dtype, for the layer's shared checks."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype == torch.bfloat16:  # ml_dtypes' bfloat16 (NumPy has none of its own)
        return Shaped(tuple(t.shape), lowp.bfloat16())
    try:
        dt = np.dtype(str(t.dtype).removeprefix("torch."))
    except TypeError:
        raise TypeError(f"{name} must have dtype float32, float64 or bfloat16; got "
                        f"{t.dtype}") from None
    return Shaped(tuple(t.shape), dt)


def _weights_dtype(weights):
    """The one NumPy dtype (float32 or float64) of the parameters."""
    dtype = check_dtype_name(_shaped("the parameters", weights[0]).dtype)
    if any(w.dtype != weights[0].dtype for w in weights):
        raise TypeError(f"the parameters must share one dtype; got {sorted({str(w.dtype) for w in weights})}")
    return dtype


def _one_device(tensors):
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f"input, hx and the parameters must be on one device; got {sorted(map(str, devices))}")


def _zero_of(tensors):
    """0 that depends on every tensor: empty (B = 0) outputs get zero gradients for them all,
    as torch.nn's do."""
    return sum(t.sum() for t in tensors if t is not None) * 0


#: the graphed executions of modules with cuda_graphs=True (one arena pool per module and
#: device, as gpulstm.LSTM(cuda_graphs=True) has one per module)
_GRAPHED = weakref.WeakKeyDictionary()


class _Module(torch.nn.Module):
    """The parameter holder of the torch face (layers and step cells): the layer's
    :class:`gpulstm.layer.LayerSpec` and its parameters as registered ``torch.nn.Parameter``s
    in torch's order. Names, shapes, checks and the forward/backward are
    :mod:`gpulstm.layer`'s, shared with :class:`gpulstm.LSTM` & co.; what is here is torch's
    surface (autograd, PackedSequence, devices, ``torch.compile``, ONNX)."""
    _step = False  # a step cell (torch.nn.LSTMCell & co.)
    #: gpulstm.init's mode of the bias options (None: the layer has none)
    _init_mode = None

    def __init__(self, cell, mode, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
                 dtype=None, *, backend=None, algo="auto", cuda_graphs=False, init=None,
                 recompute=False):
        super().__init__()
        spec = LayerSpec(cell, input_size, hidden_size, num_layers, bias, bidirectional,
                         proj_size, owner=type(self).__name__, step=self._step)
        self._spec = spec
        self.mode = mode
        self.input_size, self.hidden_size = spec.input_size, spec.hidden_size
        self.num_layers, self.proj_size = spec.num_layers, spec.proj_size
        self.bias, self.bidirectional = spec.bias, spec.bidirectional
        self.batch_first = check_bool("batch_first", batch_first)
        self.dropout = check_dropout(dropout)  # [0, 1] as torch.nn (1 zeroes every element)
        warn_dropout(self.dropout, self.num_layers)
        self.algo = check_algo(algo)  # the time loop, as gpulstm.LSTM's (backends.kernel_loop)
        self.cuda_graphs = check_bool("cuda_graphs", cuda_graphs)
        engine_check_recompute(recompute)  # checkpointed BPTT, as gpulstm.LSTM's recompute=
        self.recompute = recompute
        if backend is not None and backend != "auto":
            ex = get_backend(backend, algo)  # an unknown or unusable backend fails here
            if self.cuda_graphs:
                with_graphs(ex)  # and one without CUDA kernels to capture
        self.backend = backend
        self._init = init  # bias / weight initialisation options reset_parameters applies
        kw = {"device": device, "dtype": dtype}
        self._flat_weights_names = spec.names
        D = spec.num_directions
        self._all_weights = [[p.name for p in spec.params if (p.layer, p.direction) == (k // D, k % D)]
                             for k in range(spec.num_layers * D)]
        for p in spec.params:  # torch's registration order
            self.register_parameter(p.name, torch.nn.Parameter(torch.empty(p.shape, **kw)))
        if self._step and not spec.bias:  # torch.nn's cells register absent biases as None
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    # -- pickling (torch.save): the spec as its key, a str, so that torch.load(weights_only=True)
    # needs only the module classes allow-listed ---------------------------------------------
    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_spec"] = self._spec.key()
        return state

    def __setstate__(self, state):
        spec = state.get("_spec")
        if isinstance(spec, str):
            state = dict(state, _spec=LayerSpec.from_key(spec))
        super().__setstate__(state)

    # -- torch.nn.RNNBase's surface ---------------------------------------------------------------
    @property
    def _num_directions(self):
        return self._spec.num_directions

    @property
    def _state_size(self):
        return self._spec.state_size

    @property
    def _has_cell_state(self):
        return self._spec.has_cell_state

    @property
    def _flat_weights(self):
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self):
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def reset_parameters(self):
        """U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) in registration order, as torch.nn;
        then the initialisation options (forget_bias, chrono t_max, update_bias of
        :mod:`gpulstm.init`, seeded by torch's RNG; RNN's init="identity")."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        for w in self.parameters():
            torch.nn.init.uniform_(w, -stdv, stdv)
        options = dict(self._init or {})
        identity = options.pop("identity", False)
        if options:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            params = {n: p.detach().cpu().numpy() for n, p in self.named_parameters()}
            new = initialize(params, self._init_mode, self.hidden_size, rng=seed, **options)
            with torch.no_grad():
                for n, p in self.named_parameters():
                    if new[n] is not params[n]:
                        p.copy_(torch.from_numpy(new[n]))
        if identity:  # the IRNN (Le et al. 2015): W_hh = I, biases 0
            with torch.no_grad():
                for n, p in self.named_parameters():
                    if n.startswith("weight_hh"):
                        p.copy_(torch.eye(self.hidden_size, dtype=p.dtype, device=p.device))
                    elif n.startswith("bias"):
                        p.zero_()

    def flatten_parameters(self):
        """No-op (kept so scripts written for cuDNN run unchanged)."""

    #: a cell's own options and their defaults (shown by repr when changed)
    _option_defaults = {}

    def extra_repr(self):
        """torch.nn's repr (options shown when not their default), plus ``backend``."""
        if self._step:
            defaults = {"bias": True, "backend": None}
        else:
            defaults = {"proj_size": 0, "num_layers": 1, "bias": True, "batch_first": False,
                        "dropout": 0.0, "bidirectional": False, "backend": None, "algo": "auto",
                        "cuda_graphs": False, "recompute": False}
        defaults.update(self._option_defaults)
        opts = [f"{k}={getattr(self, k)!r}" for k, v in defaults.items() if getattr(self, k) != v]
        return ", ".join([f"{self.input_size}, {self.hidden_size}", *opts])

    # -- forward ----------------------------------------------------------------------------------
    def _execution(self, device):
        ex = _execution(self.backend, self.algo, device)
        if not self.cuda_graphs:
            return ex
        pools = _GRAPHED.setdefault(self, {})
        key = (str(device), ex.name, ex.allow_tf32)
        if key not in pools:
            pools[key] = with_graphs(ex)
        return pools[key]

    def _engine(self, x, h0, c0, weights, lengths):
        """The layer on checked tensors of one device: x [T,B,I] with B >= 1, h0 [L*D,B,Hs],
        c0 [L*D,B,H] or None, weights in torch's flat order, lengths int32 [B] (NumPy).
        Returns (y, h_n, c_n or None), through autograd where anything requires grad."""
        dropout = self.dropout if self.training else 0.0
        grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, h0, c0, *weights))
        if torch.compiler.is_compiling():  # one traced node per call (registered operators;
            # cuda_graphs: the same fused loop, not captured)
            y, h_n, c_n, _ = torch.ops.gpulstm.forward(_op_key(self), x, h0, c0, list(weights),
                                                       torch.from_numpy(lengths), dropout, grad)
            return y, h_n, (c_n if c0 is not None else None)
        call = _Call(_op_key(self), x.device, lengths, dropout, self._execution(x.device))
        if grad:
            outs = _EngineFunction.apply(call, x, h0, c0, *weights)
            return outs if len(outs) == 3 else (*outs, None)
        with call.bridge.scope():  # no autograd: nothing is kept for a backward
            y, h_n, c_n, _ = call.forward(x, h0, c0, weights, save=False)
        return y, h_n, c_n


class _Layer(_Module):
    """LSTM/GRU/RNN/... : the sequence layers."""

    def _torch_op(self):
        """torch's own operator for this layer (in torch._VF), which ONNX exporters map to
        ONNX's LSTM / GRU / RNN; None where ONNX has no such cell."""
        return {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}.get(self.mode)

    def _export_forward(self, input, hx):
        """Under ``torch.onnx.export``: the layer as torch.nn's own RNN operator with the same
        weights (torch's flat order), which both exporters translate to the ONNX LSTM/GRU/RNN
        operators (reordering the gates to ONNX's order), as torch.nn.RNNBase.forward does."""
        op = self._torch_op()
        if op is None or self.proj_size or isinstance(input, PackedSequence):
            what = ("a PackedSequence input" if isinstance(input, PackedSequence) else
                    "proj_size" if self.proj_size and op else f"{type(self).__name__} with these options")
            raise ValueError(f"gpulstm.torch: ONNX export supports LSTM, GRU and RNN on tensor "
                             f"input without proj_size (what ONNX's LSTM/GRU/RNN operators "
                             f"express); not {what}")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        x = input if batched else input.unsqueeze(batch_dim)
        LD, B = self.num_layers * self._num_directions, x.shape[batch_dim]
        states = [h if h is None or batched else h.unsqueeze(1) for h in hx]
        states = [x.new_zeros(LD, B, self.hidden_size) if h is None else h for h in states]
        args = (self._flat_weights, self.bias, self.num_layers, self.dropout, self.training,
                self.bidirectional, self.batch_first)
        if op == "lstm":
            y, h_n, c_n = torch._VF.lstm(x, tuple(states), *args)
        else:
            (y, h_n), c_n = getattr(torch._VF, op)(x, states[0], *args), None
        if not batched:
            y, h_n = y.squeeze(batch_dim), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        return y, h_n, c_n

    def _run(self, input, hx):
        """Shared forward of the layers. ``hx``: (h0, c0) with either None."""
        if torch.onnx.is_in_onnx_export():
            return self._export_forward(input, hx)
        spec = self._spec
        weights = self._flat_weights
        dtype = _weights_dtype(weights)
        packed = isinstance(input, PackedSequence)
        if packed:
            x, lens = pad_packed_sequence(input)  # [T,B,I] in the batch's original order
            batched, T, B = spec.check_input("input", _shaped("input", x), dtype)
        else:
            batched, T, B = spec.check_input("input", _shaped("input", input), dtype,
                                             self.batch_first)
            x = input if not batched else (input.transpose(0, 1) if self.batch_first else input)
            x = x if batched else x.unsqueeze(1)
            lens = None
        states = []
        for which, name, h in (("h", "h_0", hx[0]), ("c", "c_0", hx[1])):
            if which == "c" and not spec.has_cell_state:
                states.append(None)
            elif h is None:
                states.append(x.new_zeros(spec.state_shape(which, B)))
            else:
                spec.check_state(name, _shaped(name, h), which, B, batched, dtype)
                states.append(h if batched else h.unsqueeze(1))
        tensors = [x, *states, *weights]
        _one_device(tensors)
        if B == 0:  # as torch.nn: empty outputs, and zero gradients for every input
            zero = _zero_of(tensors)
            y = x.new_zeros(T, 0, spec.output_size) + zero
            h_n = x.new_zeros(spec.state_shape("h", 0)) + zero
            c_n = x.new_zeros(spec.state_shape("c", 0)) + zero if spec.has_cell_state else None
            return (y.transpose(0, 1) if self.batch_first else y), h_n, c_n
        lengths = spec.check_lengths(None if lens is None else lens.numpy(), T, B)
        y, h_n, c_n = self._engine(x, states[0], states[1], weights, lengths)
        if packed:
            idx = input.sorted_indices
            ys = y if idx is None else y.index_select(1, idx)
            ls = lens if idx is None else lens.index_select(0, idx.cpu())
            data = pack_padded_sequence(ys, ls, enforce_sorted=True).data
            y = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif not batched:
            y, h_n = y.squeeze(1), h_n.squeeze(1)
            c_n = None if c_n is None else c_n.squeeze(1)
        elif self.batch_first:
            y = y.transpose(0, 1)
        return y, h_n, c_n

    def _forward_h(self, input, hx):
        """forward of the layers with state h alone: returns output, h_n."""
        if hx is not None and not isinstance(hx, torch.Tensor):
            raise TypeError(f"{type(self).__name__} hx must be a tensor h_0 or None; got {type(hx).__name__}")
        y, h_n, _ = self._run(input, (hx, None))
        return y, h_n

    def _forward_hc(self, input, hx):
        """forward of the layers with states (h, c): returns output, (h_n, c_n)."""
        if hx is None:
            hx = (None, None)
        elif not (isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(h, torch.Tensor) for h in hx)):
            raise TypeError(f"{type(self).__name__} hx must be a tuple (h_0, c_0) of tensors or None; got {type(hx).__name__}")
        y, h_n, c_n = self._run(input, tuple(hx))
        return y, (h_n, c_n)


def _bias_init(bias, **options):
    """The initialisation options (gpulstm.init) that reset_parameters applies."""
    options = {k: v for k, v in options.items() if v is not None and v is not False}
    if options and bias is not True:
        raise ValueError(f"{', '.join(sorted(options))} needs bias=True")
    return options


class LSTM(_Layer):
    """``torch.nn.LSTM`` on gpulstm's engine: same arguments, parameters and results, plus the
    keywords of :class:`gpulstm.LSTM`: ``backend=`` (None/"auto": cpu for CPU tensors, cupy for
    CUDA tensors), ``algo=``, ``cuda_graphs=``, ``forget_bias=``, ``init="chrono"`` with
    ``t_max=`` (bias initialisations of :mod:`gpulstm.init`, re-applied by
    ``reset_parameters``), ``forget_gate=False`` and ``peephole=True``."""
    _init_mode = "LSTM"
    _option_defaults = {"forget_gate": True, "peephole": False}

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, *,
                 backend=None, algo="auto", cuda_graphs=False, recompute=False, forget_bias=None,
                 init="default", t_max=None, forget_gate=True, peephole=False):
        t_max = check_init(init, t_max, ("default", "chrono"))
        cell = _cells.LSTMCell(forget_gate=check_bool("forget_gate", forget_gate),
                               peephole=check_bool("peephole", peephole))
        super().__init__(cell, "LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size, device, dtype, backend=backend,
                         algo=algo, cuda_graphs=cuda_graphs, recompute=recompute,
                         init=_bias_init(bias, forget_bias=forget_bias, t_max=t_max))

    @property
    def forget_gate(self):
        """False: the 1997 cell without a forget gate (f = 1), as :class:`gpulstm.LSTM`."""
        return self._spec.cell.forget_gate

    @property
    def peephole(self):
        """True: diagonal peepholes, parameters ``weight_peep_l{k}`` (3, H) = p_i, p_f, p_o, as
        :class:`gpulstm.LSTM`."""
        return self._spec.cell.peephole

    def _torch_op(self):
        return "lstm" if self.forget_gate and not self.peephole else None

    def forward(self, input, hx=None):
        """input [T,B,I] ([B,T,I] with batch_first), [T,I] unbatched, or a PackedSequence;
        hx = (h_0 [L*D,B,Hs], c_0 [L*D,B,H]) or None. Returns output, (h_n, c_n)."""
        return self._forward_hc(input, hx)


class CIFG(_Layer):
    """The coupled input-forget gate LSTM (:class:`gpulstm.CIFG`: i = 1 - f, gates f, g, o) as a
    torch module: LSTM's interface (hx = (h_0, c_0); returns output, (h_n, c_n)) with three
    gate blocks, ``weight_ih_l{k}`` (3H, I); no ``proj_size``."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend=None,
                 algo="auto", cuda_graphs=False, recompute=False, proj_size=0):
        super().__init__(_cells.CIFGCell(), "CIFG", input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, proj_size, device, dtype, backend=backend,
                         algo=algo, cuda_graphs=cuda_graphs, recompute=recompute)

    forward = LSTM.forward


class GRU(_Layer):
    """``torch.nn.GRU`` on gpulstm's engine (see :class:`LSTM` for ``backend=``, ``algo=``,
    ``cuda_graphs=``), plus ``update_bias=`` (:mod:`gpulstm.init`)."""
    _init_mode = "GRU"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, *, backend=None,
                 algo="auto", cuda_graphs=False, recompute=False, proj_size=0, update_bias=None):
        super().__init__(_cells.GRUCell(), "GRU", input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, bidirectional, proj_size, device, dtype, backend=backend,
                         algo=algo, cuda_graphs=cuda_graphs, recompute=recompute,
                         init=_bias_init(bias, update_bias=update_bias))

    def forward(self, input, hx=None):
        """Like :meth:`LSTM.forward` with hx = h_0 (or None). Returns output, h_n."""
        return self._forward_h(input, hx)


class RNN(_Layer):
    """``torch.nn.RNN`` (Elman, tanh or relu) on gpulstm's engine, plus ``init="identity"``
    (the IRNN of Le et al. 2015: W_hh = I, biases 0, as :class:`gpulstm.RNN`)."""
    _option_defaults = {"nonlinearity": "tanh"}

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend=None, algo="auto", cuda_graphs=False, recompute=False, proj_size=0,
                 init="default"):
        check_nonlinearity(nonlinearity)
        if not isinstance(init, str) or init not in ("default", "identity"):
            raise ValueError(f"init must be 'default' or 'identity'; got {init!r}")
        self.nonlinearity = nonlinearity
        super().__init__(_cells.RNNCell(nonlinearity), "RNN_" + nonlinearity.upper(),
                         input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, device, dtype, backend=backend, algo=algo,
                         cuda_graphs=cuda_graphs, recompute=recompute,
                         init={"identity": init == "identity"})

    forward = GRU.forward


class IndRNN(_Layer):
    """The independently recurrent layer (:class:`gpulstm.IndRNN`, Li et al. 2018: h = act(W_ih x
    + b_ih + u * h_{t-1} + b_hh), relu by default) as a torch module: RNN's interface (hx = h_0;
    returns output, h_n) with ``weight_hh_l{k}`` the vector u of shape (H,). torch.nn has no
    such layer (and ONNX no such operator: export is refused)."""
    _option_defaults = {"nonlinearity": "relu"}

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="relu", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, *,
                 backend=None, algo="auto", cuda_graphs=False, recompute=False, proj_size=0):
        check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(_cells.IndRNNCell(nonlinearity), "IndRNN", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, proj_size, device,
                         dtype, backend=backend, algo=algo, cuda_graphs=cuda_graphs,
                         recompute=recompute)

    forward = GRU.forward


# -- step cells -----------------------------------------------------------------------------------
class _CellBase(_Module):
    """``torch.nn.RNNCellBase`` on gpulstm's engine: one time step per call (a sequence of
    length 1 through the same layer core and autograd function as the layers). Parameters
    ``weight_ih`` (G*H, I), ``weight_hh`` (G*H, H), ``bias_ih``, ``bias_hh`` (G*H) as
    torch.nn's cells (same initialisation under ``torch.manual_seed``; state dicts load both
    ways)."""
    _step = True

    def __init__(self, cell, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend=None):
        super().__init__(cell, type(self).__name__, input_size, hidden_size, 1, bias,
                         device=device, dtype=dtype, backend=backend)

    #: torch's own step operator (torch._VF), what the ONNX exporters translate
    _vf_cell = None

    def _export_step(self, input, states):
        """Under ``torch.onnx.export``: the step as torch.nn's cells run it (torch._VF's
        lstm_cell / gru_cell / rnn_*_cell with the same weights), which both exporters
        translate to ONNX operators."""
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        H = self.hidden_size
        hs = [None if h is None else (h if batched else h.unsqueeze(0)) for h in states]
        hs = [x.new_zeros(x.shape[0], H) if h is None else h for h in hs]
        op = getattr(torch._VF, self._vf_cell)
        if self._has_cell_state:
            out = list(op(x, tuple(hs), self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh))
        else:
            out = [op(x, hs[0], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh), None]
        return [o if o is None or batched else o.squeeze(0) for o in out]

    def _step_call(self, input, states):
        """input [B,I] or [I]; states (h, c or None), each [B,H] / [H] or None (zeros).
        Returns the new (h, c or None), shaped as the input."""
        if torch.onnx.is_in_onnx_export():
            return self._export_step(input, states)
        name = type(self).__name__
        weights = self._flat_weights
        dtype = _weights_dtype(weights)
        ndim = len(_shaped("input", input).shape)
        if ndim not in (1, 2):
            raise ValueError(f"{name}: input must be 2-D (B, {self.input_size}) or 1-D "
                             f"({self.input_size},) unbatched; got shape {tuple(input.shape)}")
        batched = ndim == 2
        x = input if batched else input.unsqueeze(0)
        check_array("input", _shaped("input", x), (None, self.input_size), dtype)
        B, H = x.shape[0], self.hidden_size
        hs = []
        for i, h in enumerate(states):
            if i == 1 and not self._has_cell_state:
                hs.append(None)
                continue
            label = ("hx[0]", "hx[1]")[i] if self._has_cell_state else "hx"
            if h is None:
                hs.append(x.new_zeros(B, H))
            else:
                check_array(label, _shaped(label, h), (B, H) if batched else (H,), dtype)
                hs.append(h if batched else h.unsqueeze(0))
        tensors = [x, *hs, *weights]
        _one_device(tensors)
        if B == 0:  # as torch.nn: empty outputs, and zero gradients for every input
            zero = _zero_of(tensors)
            out = [None if h is None else x.new_zeros(0, H) + zero for h in hs]
        else:
            _, h_n, c_n = self._engine(x.unsqueeze(0), hs[0].unsqueeze(0),
                                       None if hs[1] is None else hs[1].unsqueeze(0), weights,
                                       np.ones(B, np.int32))
            out = [h_n[0], None if c_n is None else c_n[0]]
        return [o if o is None or batched else o.squeeze(0) for o in out]


class LSTMCell(_CellBase):
    """``torch.nn.LSTMCell`` on gpulstm's engine: ``forward(input, hx=None)`` with input [B, I]
    (or [I]) and hx = (h, c) each [B, H] (or [H]) returns (h', c'). ``backend=`` as on
    :class:`LSTM`."""
    _vf_cell = "lstm_cell"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend=None):
        super().__init__(_cells.LSTMCell(), input_size, hidden_size, bias, device, dtype,
                         backend=backend)

    def forward(self, input, hx=None):
        if hx is None:
            hx = (None, None)
        elif not (isinstance(hx, (tuple, list)) and len(hx) == 2 and all(isinstance(h, torch.Tensor) for h in hx)):
            raise TypeError(f"LSTMCell hx must be a tuple (h, c) of tensors or None; got {type(hx).__name__}")
        h, c = self._step_call(input, tuple(hx))
        return h, c


class GRUCell(_CellBase):
    """``torch.nn.GRUCell`` on gpulstm's engine: ``forward(input, hx=None)`` returns h'."""
    _vf_cell = "gru_cell"

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *,
                 backend=None):
        super().__init__(_cells.GRUCell(), input_size, hidden_size, bias, device, dtype,
                         backend=backend)

    def forward(self, input, hx=None):
        if hx is not None and not isinstance(hx, torch.Tensor):
            raise TypeError(f"{type(self).__name__} hx must be a tensor or None; got {type(hx).__name__}")
        return self._step_call(input, (hx, None))[0]


class RNNCell(_CellBase):
    """``torch.nn.RNNCell`` (tanh or relu) on gpulstm's engine: ``forward(input, hx=None)``
    returns h'."""
    _option_defaults = {"nonlinearity": "tanh"}

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None,
                 dtype=None, *, backend=None):
        check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        super().__init__(_cells.RNNCell(nonlinearity), input_size, hidden_size, bias, device,
                         dtype, backend=backend)
        self._vf_cell = f"rnn_{nonlinearity}_cell"

    forward = GRUCell.forward

"""The recurrent layer, specified once, under both faces.

``gpulstm.LSTM/GRU/RNN/...`` (NumPy / CuPy arrays) and ``gpulstm.torch``'s modules (tensors)
are parameter holders around the two things here:

:class:`LayerSpec`
    What a stack of recurrent layers is: the engine's cell, the sizes and the structural
    options, checked once. From it come the parameters' names and shapes in torch's order
    (:attr:`LayerSpec.params`), the flat <-> [layer][direction] layout the engine takes
    (:meth:`LayerSpec.nest`, :meth:`LayerSpec.flatten`), and the checks of a call's input,
    states and lengths, written against shapes and dtypes so that arrays and tensors get the
    same messages.

:func:`forward` / :func:`backward`
    One functional forward and BPTT over an execution, on [T, B, I] arrays: the empty batch,
    the memory guard and the engine call. A training forward returns a :class:`Reserve`
    (like cuDNN's reserve space): an opaque object its backward takes, which the torch face
    hands to ``save_for_backward`` as a list of arrays (:meth:`Reserve.pack`) without knowing
    what they are.

Data flows one way: face -> this module -> :mod:`gpulstm.engine` -> cell -> execution.
"""
from __future__ import annotations

import ast
import functools
import sys
import warnings
from collections import namedtuple

import numpy as np

from . import engine
from ._checks import check_array, check_bool, check_int, check_lengths
from .engine import check_recompute  # noqa: F401  (the faces' check of recompute=)

#: the engine's short names -> torch's parameter name stems
WEIGHT_NAMES = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh",
                "w_hr": "weight_hr", "peep": "weight_peep"}

#: one parameter: its layer, direction, engine short name, torch name and shape
Param = namedtuple("Param", "layer direction short name shape")

#: a shape and a dtype: what the checks read of an array or a tensor
Shaped = namedtuple("Shaped", "shape dtype")


def user_stacklevel():
    """``warnings.warn``'s stacklevel of the first frame outside the gpulstm package (the
    user's line), whatever the depth of the constructors in between."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("gpulstm"):
        frame, level = frame.f_back, level + 1
    return level


def warn_dropout(dropout, num_layers):
    """torch.nn's warning for dropout on a single layer (it applies between layers only)."""
    if dropout > 0 and num_layers == 1:
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                      "non-zero dropout expects num_layers greater than 1, but got "
                      f"dropout={dropout} and num_layers={num_layers}", UserWarning,
                      stacklevel=user_stacklevel())


class LayerSpec:
    """A stack of ``num_layers`` recurrent layers of ``cell`` (an engine cell of
    :mod:`gpulstm.cells`), ``bidirectional`` or not, as torch.nn's RNN modules describe it.
    ``owner`` names the public class in messages; ``step=True`` describes a step cell
    (torch.nn.LSTMCell & co.: one layer, one direction, names without the ``_l0`` suffix).
    Immutable once built: the parameters' shapes depend on every field."""

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True,
                 bidirectional=False, proj_size=0, *, owner, step=False):
        self.cell = cell
        self.owner = owner
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        P = check_int("proj_size", proj_size, 0)
        if P and not cell.projects:
            raise ValueError(f"proj_size is supported by LSTM only, not {owner}")
        if P >= self.hidden_size:
            raise ValueError(f"proj_size must be < hidden_size={hidden_size}; got {proj_size}")
        self.proj_size = P
        self.bias = check_bool("bias", bias)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        self.step = bool(step)
        self.params = tuple(self._build())
        layout = [[[] for _ in range(self.num_directions)] for _ in range(self.num_layers)]
        for p in self.params:
            layout[p.layer][p.direction].append(p.short)
        self._layout = tuple(tuple(tuple(d) for d in dirs) for dirs in layout)

    def key(self):
        """This spec as a string (what torch.compile's registered operators take):
        :meth:`from_key` rebuilds an equal spec. Made once (it is asked at every call)."""
        key = self.__dict__.get("_key")
        if key is None:
            key = self.__dict__["_key"] = self._make_key()
        return key

    def _make_key(self):
        return repr((type(self.cell).__name__, self.cell.config(), self.input_size,
                     self.hidden_size, self.num_layers, self.bias, self.bidirectional,
                     self.proj_size, self.owner, self.step))

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def from_key(key):
        from . import cells
        name, config, I, H, L, bias, bi, P, owner, step = ast.literal_eval(key)
        return LayerSpec(getattr(cells, name)(**config), I, H, L, bias, bi, P, owner=owner,
                         step=step)

    # -- structure ------------------------------------------------------------------------------
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def state_size(self):
        """Hs: the width of h (proj_size when projecting, else hidden_size)."""
        return self.proj_size or self.hidden_size

    @property
    def has_cell_state(self):
        return self.cell.has_cell_state

    @property
    def output_size(self):
        return self.num_directions * self.state_size

    def _build(self):
        cell, H, Hs, D = self.cell, self.hidden_size, self.state_size, self.num_directions
        G = cell.gates
        for layer in range(self.num_layers):
            I = self.input_size if layer == 0 else D * Hs
            for d in range(D):
                shapes = dict(cell.weight_shapes(I, H, Hs))
                if self.bias:
                    shapes.update(b_ih=(G * H,), b_hh=(G * H,))
                shapes.update(cell.extra_shapes(H, self.proj_size))
                for short, shape in shapes.items():
                    stem = WEIGHT_NAMES[short]
                    name = stem if self.step else f"{stem}_l{layer}{'_reverse' if d else ''}"
                    yield Param(layer, d, short, name, tuple(shape))

    @property
    def names(self):
        """The parameters' torch names, in torch's registration order."""
        return [p.name for p in self.params]

    def nest(self, flat):
        """Parameters in :attr:`params` order -> [layer][direction] weight dicts for the engine
        (absent biases None)."""
        out, it = [], iter(flat)
        for dirs in self._layout:
            ds = []
            for shorts in dirs:
                w = {"b_ih": None, "b_hh": None}
                for short in shorts:
                    w[short] = next(it)
                ds.append(w)
            out.append(ds)
        return out

    def flatten(self, nested):
        """[layer][direction] dicts (the engine's gradients) -> a list in :attr:`params` order."""
        return [nested[layer][d][short] for layer, dirs in enumerate(self._layout)
                for d, shorts in enumerate(dirs) for short in shorts]

    def saved_bytes(self, T, B, itemsize, recompute=False, rows=None):
        """Bytes a training forward keeps for its backward (the memory guard's figure; with
        ``recompute``, :func:`gpulstm.engine.saved_bytes`'s segment figure)."""
        return engine.saved_bytes(self.cell, T, B, self.input_size, self.hidden_size,
                                  self.state_size, self.num_layers, self.num_directions, itemsize,
                                  recompute, rows)

    # -- the checks of one call (shapes and dtypes: arrays and tensors alike) -------------------
    def check_input(self, name, x, dtype, batch_first=False):
        """``x`` (anything with ``shape`` and ``dtype``): 3-D ([B,T,I] with ``batch_first``,
        else [T,B,I]) or 2-D [T,I] unbatched. Returns (batched, T, B)."""
        shape = tuple(x.shape)
        if len(shape) not in (2, 3):
            want = "(B, T, I)" if batch_first else "(T, B, I)"
            raise ValueError(f"{name} must be 3-D {want} or 2-D (T, I) unbatched, i.e. shape "
                             f"(*, {self.input_size}) or shape (*, *, {self.input_size}); got "
                             f"{shape}")
        check_array(name, x, (None,) * (len(shape) - 1) + (self.input_size,), dtype)
        batched = len(shape) == 3
        T, B = (shape[1], shape[0]) if batched and batch_first else \
            (shape[0], shape[1] if batched else 1)
        if T < 1:
            raise ValueError(f"{name} must have at least one time step; got shape {shape}")
        return batched, T, B

    def state_shape(self, which, B):
        """[L*D, B, Hs] for ``which="h"``, [L*D, B, H] for ``"c"``."""
        return (self.num_layers * self.num_directions, B,
                self.state_size if which == "h" else self.hidden_size)

    def check_state(self, name, h, which, B, batched, dtype):
        """A user's initial state (or a state gradient) against :meth:`state_shape`; for
        unbatched input it has no batch axis."""
        shape = self.state_shape(which, B)
        if not batched:
            shape = (shape[0], shape[2])
            if len(tuple(h.shape)) != 2:
                raise ValueError(f"{name} must have shape {shape}: for unbatched 2-D input, "
                                 f"{name} must also be 2-D {shape}; got shape {tuple(h.shape)}")
        check_array(name, h, shape, dtype)

    @staticmethod
    def check_lengths(lengths, T, B):
        """Per-sequence lengths -> int32 NumPy [B], each in [1, T]; None: all T."""
        return np.full(B, T, np.int32) if lengths is None else check_lengths(lengths, T, B)

    def __repr__(self):
        return (f"LayerSpec({self.owner}: {self.cell.name}, {self.input_size}, "
                f"{self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                f"bidirectional={self.bidirectional}, proj_size={self.proj_size})")


# -- the functional core -------------------------------------------------------------------------
class Reserve:
    """What a training forward keeps for its backward, opaque to the faces (cuDNN's reserve
    space). :meth:`pack` splits it into a token and the list of arrays it holds (the torch
    face saves those with ``save_for_backward``); :meth:`unpack` puts it back together with
    the weights of the call."""

    __slots__ = ("spec", "ctx", "shape")

    def __init__(self, spec, ctx, shape):
        self.spec, self.ctx, self.shape = spec, ctx, shape  # ctx None: an empty batch

    def pack(self, xp):
        """(token, arrays): ``arrays`` every array of the reserve once per reference (not the
        weights), ``token`` the rest."""
        if self.ctx is None:
            return (self.spec, None, self.shape), []
        skeleton, arrays = self.ctx.pack(xp)
        return (self.spec, skeleton, self.shape), arrays

    @classmethod
    def unpack(cls, token, arrays, weights):
        spec, skeleton, shape = token
        ctx = None if skeleton is None else \
            engine.Context.unpack(skeleton, arrays, spec.cell, spec.nest(weights))
        return cls(spec, ctx, shape)


def forward(ex, spec, weights, x, h0=None, c0=None, lengths=None, *, dropout=0.0, rng=None,
            save=True, recompute=False):
    """The stacked layers of ``spec`` on the execution ``ex``.

    ``weights`` in :attr:`LayerSpec.params` order; ``x`` [T,B,I], ``h0`` [L*D,B,Hs] and
    ``c0`` [L*D,B,H] (cells with a cell state) arrays of ``ex`` in the parameters' dtype, the
    states None for zeros; ``lengths`` int32 NumPy [B] (checked) or None; ``dropout`` between
    layers with masks from ``rng`` (:func:`gpulstm.engine.dropout_mask`); ``save=False``
    (inference) keeps nothing for a backward (whose :class:`Reserve` then says so when
    differentiated); ``recompute`` (False, True or steps per segment: checkpointed BPTT,
    :func:`gpulstm.engine.forward`) keeps only segment start states for the backward to run
    again, the same gradients bit for bit. Returns (y [T,B,D*Hs], h_n, c_n or None,
    reserve)."""
    xp = ex.xp
    T, B = x.shape[0], x.shape[1]
    dt = x.dtype
    if h0 is None:
        h0 = xp.zeros(spec.state_shape("h", B), dt)
    if spec.has_cell_state and c0 is None:
        c0 = xp.zeros(spec.state_shape("c", B), dt)
    if not spec.has_cell_state:
        c0 = None
    if B == 0:  # an empty batch: empty outputs, and a backward of zeros
        y = xp.zeros((T, 0, spec.output_size), dt)
        return y, h0.copy(), (None if c0 is None else c0.copy()), Reserve(spec, None, (T, 0))
    lens = ex.asarray(np.full(B, T, np.int32) if lengths is None else lengths, np.int32)
    rc = recompute if save else False
    need = spec.saved_bytes(T, B, dt.itemsize, rc, engine.window_rows(ex))
    with ex.memory_guard(need, f"{spec.owner} forward (T={T}, B={B}, H={spec.hidden_size})"):
        y, h_n, c_n, ctx = engine.forward(ex, spec.cell, spec.nest(weights), x, h0, c0, lens,
                                          dropout, rng, save=save, recompute=rc)
    return y, h_n, c_n, Reserve(spec, ctx, (T, B))


def backward(ex, reserve, dy, dh_n=None, dc_n=None, record_state_grads=False):
    """BPTT of the forward that gave ``reserve``: ``dy`` [T,B,D*Hs], ``dh_n`` / ``dc_n`` or
    None. Returns (dx [T,B,I], dh0, dc0 or None, gradients in :attr:`LayerSpec.params` order,
    the per-step state gradients [L][D] or None)."""
    spec, ctx = reserve.spec, reserve.ctx
    T, B = reserve.shape
    xp = ex.xp
    if ctx is None:  # the empty batch
        dt = dy.dtype
        dx = xp.zeros((T, 0, spec.input_size), dt)
        dh0 = xp.zeros(spec.state_shape("h", 0), dt)
        dc0 = xp.zeros(spec.state_shape("c", 0), dt) if spec.has_cell_state else None
        return dx, dh0, dc0, [xp.zeros(p.shape, dt) for p in spec.params], None
    need = spec.saved_bytes(T, B, dy.dtype.itemsize, ctx.recompute, engine.window_rows(ex))
    with ex.memory_guard(need, f"{spec.owner} backward (T={T}, B={B}, H={spec.hidden_size})"):
        dx, dh0, dc0, grads = engine.backward(ex, ctx, dy, dh_n, dc_n, record_state_grads)
    return dx, dh0, dc0, spec.flatten(grads), (ctx.state_grads if record_state_grads else None)

"""Bias initialisations that set a recurrent layer's memory time scale at the start of training.

    >>> import gpulstm as gl
    >>> from gpulstm.init import initialize
    >>> m = gl.LSTM(4, 16, backend="numpy")
    >>> m.load_state_dict(initialize(m.state_dict(), "LSTM", 16, forget_bias=3.0))

:func:`initialize` is a pure function of a parameter dict named as PyTorch names them
(``weight_ih_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ``..._reverse``): it returns a new dict whose
bias entries are set, every other entry passed through as the same object. A bias entry comes
back as a new NumPy array of its dtype (``torch.nn`` and gpulstm layers both load that).

- LSTM (gate order i, f, g, o), ``forget_bias=b``: the forget-gate block of every ``bias_ih``
  is ``b`` and of every ``bias_hh`` 0, so the sum the cell adds (``b_ih + b_hh``, what a
  torch user compares) is ``b``. At f = sigmoid(b) the cell state decays with a time constant
  of about 1 / (1 - sigmoid(b)) steps: 3.7 for b = 1, 21 for b = 3.
- LSTM, ``t_max=T`` (chrono initialisation, Tallec & Ollivier 2018, "Can recurrent neural
  networks warp time?", ICLR, section 5): per unit b_f ~ log(U[1, T - 1]) and b_i = -b_f, in
  ``bias_ih`` with the i and f blocks of ``bias_hh`` 0; drawn independently for every layer
  and direction from ``rng``. T is the longest dependency expected (the task's lag).
- GRU (gate order r, z, n; h' = (1 - z) * n + z * h), ``update_bias=b``: the update-gate
  block of every ``bias_ih`` is ``b`` and of ``bias_hh`` 0; b > 0 makes the unit keep h.

RNN modes take none of these. Bad arguments raise ValueError / TypeError naming what was
expected.
"""
from __future__ import annotations

import math
import numbers
import re

import numpy as np

from .lowp import is_bf16

__all__ = ["initialize", "check_init", "MODES"]

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_BIAS_KEY = re.compile(r"^bias_(ih|hh)_l\d+(_reverse)?$")


def _real(name, value, low=None, low_inclusive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number; got {type(value).__name__} {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}; got {value!r}")
    return float(value)


def _to_numpy(a):
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    elif hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        a = a.get()
    return np.array(a, copy=True)


def _generator(rng):
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator, a non-negative int seed or None; "
                    f"got {type(rng).__name__} {rng!r}")


def initialize(params, mode, hidden_size, *, forget_bias=None, t_max=None, update_bias=None,
               rng=None):
    """A copy of ``params`` (PyTorch-named arrays of one layer stack of ``mode``, one of
    :data:`MODES`, with ``hidden_size`` units) with its biases initialised (module docstring):
    LSTM ``forget_bias`` or chrono ``t_max`` (one of them), GRU ``update_bias``. ``rng`` (a
    Generator or int seed; None = fresh entropy) draws the chrono biases only."""
    if not hasattr(params, "keys") or not hasattr(params, "items"):
        raise TypeError(f"params must be a mapping of parameter name to array; got "
                        f"{type(params).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, numbers.Integral) \
            or hidden_size < 1:
        raise ValueError(f"hidden_size must be a positive int; got {hidden_size!r}")
    H = int(hidden_size)
    given = {k: v for k, v in (("forget_bias", forget_bias), ("t_max", t_max),
                               ("update_bias", update_bias)) if v is not None}
    allowed = {"LSTM": {"forget_bias", "t_max"}, "GRU": {"update_bias"}}.get(mode, set())
    wrong = sorted(set(given) - allowed)
    if wrong:
        raise ValueError(f"{', '.join(wrong)} does not apply to mode {mode!r}; it takes "
                         f"{sorted(allowed) or 'none of forget_bias, t_max, update_bias'}")
    if "forget_bias" in given and "t_max" in given:
        raise ValueError("give forget_bias or t_max (chrono initialisation), not both")
    if forget_bias is not None:
        forget_bias = _real("forget_bias", forget_bias)
    if update_bias is not None:
        update_bias = _real("update_bias", update_bias)
    if t_max is not None:
        t_max = _real("t_max", t_max, low=2.0)
    gen = _generator(rng) if t_max is not None else None

    out = dict(params)
    bias_keys = sorted((k for k in params if _BIAS_KEY.match(str(k))),
                       key=lambda k: (int(re.search(r"_l(\d+)", k).group(1)),
                                      k.endswith("_reverse"), "hh" in k))
    if given and not bias_keys:
        raise ValueError(f"{', '.join(sorted(given))} needs bias parameters (bias_ih_l0, "
                         f"bias_hh_l0, ...); params has {sorted(params)}")
    for key in bias_keys:
        b = _to_numpy(params[key])
        if b.shape != (_GATES[mode] * H,):
            raise ValueError(f"params[{key!r}] has shape {b.shape}; expected "
                             f"({_GATES[mode]} * hidden_size,) = ({_GATES[mode] * H},) for {mode}")
        if b.dtype.kind != "f" and not is_bf16(b.dtype):
            raise TypeError(f"params[{key!r}] must be a floating-point array; got {b.dtype}")
        ih = "_ih_" in key
        if forget_bias is not None or update_bias is not None:
            value = forget_bias if forget_bias is not None else update_bias
            b[H:2 * H] = value if ih else 0.0
        elif t_max is not None:
            if ih:
                bf = np.log(gen.uniform(1.0, t_max - 1.0, size=H))
                b[H:2 * H] = bf
                b[:H] = -bf
            else:
                b[:2 * H] = 0.0
        out[key] = b
    return out


def check_init(init, t_max, allowed):
    """``t_max`` for init="chrono" (required there, refused elsewhere); validates ``init``."""
    if not isinstance(init, str) or init not in allowed:
        raise ValueError(f"init must be one of {allowed}; got {init!r}")
    if init == "chrono" and t_max is None:
        raise ValueError("init='chrono' needs t_max, the longest dependency expected (e.g. "
                         "the task's lag in steps)")
    if init != "chrono" and t_max is not None:
        raise ValueError(f"t_max is the chrono initialisation's horizon; pass init='chrono' "
                         f"with it (init={init!r})")
    return t_max

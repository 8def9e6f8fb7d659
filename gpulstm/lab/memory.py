"""Gradient-flow probe: how far back the loss gradient reaches through the recurrence.

With the loss at the last step only, L = sum_b u . h_T[b] (``u`` a fixed random unit vector,
the same for every sequence of the batch), the probe measures for every state h_k
(k = 0..T, h_0 the initial state, h_T the last) the batch mean of ||dL/dh_k|| and, for
LSTMs, of ||dL/dc_k||, from ONE backward pass. Distance d = T - k. Derived figures:

- ``ratio[d] = mean_b ||dL/dh_{T-d}|| / mean_b ||dL/dh_T||`` (1 at d = 0);
- ``distance_1e3``, ``distance_1e6``: the first distance at which ``ratio`` falls below
  1e-3 (1e-6). When it stays above over the whole sequence the value is ``T + 1`` ("more
  than T": a lower bound, not a measurement);
- ``log10_ratio_end``: log10 of ``ratio[T]`` (the gradient reaching the initial state; -inf
  when it underflows to 0).

dL/dh_k and dL/dc_k are gradients with respect to the *state* (h_k, c_k) that step k+1 reads,
the quantities the engine carries between backward steps (and that ``grad_hx`` reports for
k = 0). The loss does not read c_T directly, so dL/dc_T = 0 and ``ratio_c`` is normalised by
||dL/dh_T|| as well.

The probe runs in float64 by default so that long vanishing gradients show their true size
instead of float32 underflow. Inputs are adding-problem sequences
(:func:`gpulstm.lab.tasks.adding_problem`), the task the cells are trained on before the "after training" probe.
"""
from __future__ import annotations

import numpy as np

from .tasks import adding_problem
from .train import make_cell

__all__ = ["gradient_flow", "state_grads", "engine_state_grads", "first_distance_below"]


def engine_state_grads(model):
    """Per-step state gradients the engine recorded during the model's last backward.

    Needs ``model.record_state_grads = True`` before that backward (the engine then keeps the
    gradient of every state it passes between backward steps). Returns ``(dh, dc)`` for
    layer 0, direction 0: dh [T,B,Hs] = dL/dh_t and dc [T,B,H] = dL/dc_t (None for GRU/RNN),
    index t = the state written at time step t, i.e. what the engine's ``g["dh"] + dY[t]``
    and ``g["dc"]`` hold just before the backward step of time t.
    Raises NotImplementedError when nothing was recorded.
    """
    sg = getattr(model, "state_grads", None)
    if not sg or not sg[0][0]:
        raise NotImplementedError("no state gradients recorded; set model.record_state_grads "
                                  "= True before backward()")
    sg = sg[0][0]
    return sg["dh"], sg.get("dc")


def state_grads(model, x, grad_out, hx=None, grad_h_n=None, grad_c_n=None):
    """Forward ``x``, backward ``grad_out`` and return the per-step state gradients
    ``(dh [T,B,Hs], dc [T,B,H] or None)`` recorded by the engine in that backward pass (see
    :func:`engine_state_grads`). ``model.grad_hx`` holds the initial-state gradient afterwards."""
    model(x, hx)
    kw = {} if grad_c_n is None else {"grad_c_n": grad_c_n}
    flag = model.record_state_grads
    model.record_state_grads = True
    try:
        model.backward(grad_out, grad_h_n, **kw)
    finally:
        model.record_state_grads = flag
    return engine_state_grads(model)


def first_distance_below(ratio, threshold):
    """First distance d (index into ``ratio``, d = 0..T) with ratio[d] < threshold; T + 1 when
    there is none (the ratio stays above the threshold over the whole sequence)."""
    below = np.flatnonzero(np.asarray(ratio) < threshold)
    return int(below[0]) if below.size else len(ratio)


def gradient_flow(cell, T, seed=0, hidden=32, batch=16, backend="numpy", dtype="float64",
                  model=None, x=None):
    """Probe the gradient flow of ``cell`` (a name for :func:`gpulstm.lab.train.make_cell`,
    initialised with ``seed``) over ``T`` steps, or of a given ``model`` (e.g. a trained one;
    then ``cell``, ``hidden``, ``backend`` and ``dtype`` are taken from it).

    Inputs: ``x`` [T,B,I] when given, else ``batch`` adding-problem sequences drawn with
    ``seed`` (needs input_size 2). Returns a dict: ``cell``, ``T``, ``seed``; arrays over the
    distance d = 0..T: ``distance``, ``dh_norm`` (batch mean of ||dL/dh_{T-d}||), ``ratio``,
    ``dc_norm`` and ``ratio_c`` (LSTM; None otherwise); scalars ``distance_1e3``,
    ``distance_1e6`` (T + 1 = not within T) and ``log10_ratio_end``. See the module docstring.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x67726164]))
    if model is None:
        model = make_cell(cell, 2, hidden, backend=backend, dtype=dtype, seed=seed, t_max=T)
    ex, xp = model.ex, model.ex.xp
    if x is None:
        x, _ = adding_problem(rng, T, batch, np.float64)
    x = ex.asarray(x, model.dtype)
    T, B = x.shape[:2]
    Hs = model.proj_size or model.hidden_size
    u = rng.standard_normal(Hs)
    u /= np.linalg.norm(u)
    grad_out = xp.zeros((T, B, Hs), model.dtype)
    grad_out[T - 1] = ex.asarray(u, model.dtype)
    dh, dc = state_grads(model, x, grad_out)
    g0 = model.grad_hx
    dh0, dc0 = (g0[0][0], g0[1][0]) if isinstance(g0, tuple) else (g0[0], None)

    def norms(first, per_step):  # [T+1] indexed by distance d = T - k
        n = xp.sqrt((xp.concatenate([first[None], per_step]) ** 2).sum(axis=2)).mean(axis=1)
        return ex.to_numpy(n).astype(np.float64)[::-1].copy()

    dh_norm = norms(dh0, dh)
    ref = dh_norm[0]
    ratio = dh_norm / ref
    out = {"cell": cell, "T": T, "seed": seed, "distance": np.arange(T + 1),
           "dh_norm": dh_norm, "ratio": ratio, "dc_norm": None, "ratio_c": None,
           "distance_1e3": first_distance_below(ratio, 1e-3),
           "distance_1e6": first_distance_below(ratio, 1e-6)}
    with np.errstate(divide="ignore"):
        out["log10_ratio_end"] = float(np.log10(ratio[T]))
    if dc is not None:
        out["dc_norm"] = norms(dc0, dc)
        out["ratio_c"] = out["dc_norm"] / ref
    return out

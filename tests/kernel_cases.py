"""Shared cases for checking a kernel-backed execution against the NumPy reference.

Used by test_kernels_emulated.py (backend "emulated", every CI run) and test_gpu.py (backend
"cupy"). Two levels:

* pointwise: every kernel on random inputs, outputs poisoned with NaN so that an element the
  kernel forgot to write fails (:func:`check_pointwise`);
* public API: a module on the tested backend against the same module on "numpy" with the same
  weights: outputs, final states, dx, every parameter gradient and grad_hx
  (:func:`check_module`).
"""
import numpy as np

import gpulstm as gl
from gpulstm.gpucheck import PoisonXP
from gpulstm.backends import numpy_pointwise as ref
from gpulstm.backends.numpy_pointwise import LSTM_NO_FORGET, LSTM_PEEPHOLE, LSTM_PROJ, RNN_RELU

#: relative tolerance per dtype (errors are measured against max(1, max|reference|))
RTOL = {"float32": 1e-5, "float64": 1e-12}

# -- pointwise ---------------------------------------------------------------------------------
# argument kinds: "in" read only, "io" read and written, "out" written (poisoned), "len" lengths,
# "t" time index, "flags"; widths in units of H (None: the [3,H] peephole table or [H] bias)
_SPECS = {
    "lstm_forward": [("gx", "in", 4), ("gh", "in", 4), ("c_prev", "in", 1), ("h_prev", "in", 1),
                     ("lengths", "len"), ("t", "t"), ("peep", "in", "peep"), ("gates", "out", 4),
                     ("c_next", "out", 1), ("h_next", "out", 1), ("y", "out", 1), ("flags", "flags")],
    "lstm_backward": [("gates", "in", 4), ("c", "in", 1), ("c_prev", "in", 1), ("dh_in", "in", 1),
                      ("dh_next", "io", 1), ("dy", "in", 1), ("dc_next", "io", 1), ("lengths", "len"),
                      ("t", "t"), ("peep", "in", "peep"), ("dgates", "out", 4), ("flags", "flags")],
    "lstm_proj_forward": [("h_next", "io", 1), ("h_prev", "in", 1), ("lengths", "len"), ("t", "t"),
                          ("y", "out", 1)],
    "lstm_proj_backward": [("dh_next", "io", 1), ("dy", "in", 1), ("lengths", "len"), ("t", "t"),
                           ("dhr", "out", 1)],
    "gru_forward": [("gx", "in", 3), ("gh", "in", 3), ("b_hn", "in", "bias"), ("h_prev", "in", 1),
                    ("lengths", "len"), ("t", "t"), ("gates", "out", 4), ("h_next", "out", 1),
                    ("y", "out", 1)],
    "gru_backward": [("gates", "in", 4), ("h_prev", "in", 1), ("dh_next", "io", 1), ("dy", "in", 1),
                     ("lengths", "len"), ("t", "t"), ("dgx", "out", 3), ("dgh", "out", 3)],
    "rnn_forward": [("gx", "in", 1), ("gh", "in", 1), ("h_prev", "in", 1), ("lengths", "len"),
                    ("t", "t"), ("h_next", "out", 1), ("y", "out", 1), ("flags", "flags")],
    "rnn_backward": [("h", "in", 1), ("dh_next", "io", 1), ("dy", "in", 1), ("lengths", "len"),
                     ("t", "t"), ("dgates", "out", 1), ("flags", "flags")],
}
_LSTM_FLAGS = (0, LSTM_NO_FORGET, LSTM_PEEPHOLE, LSTM_PROJ, LSTM_NO_FORGET | LSTM_PEEPHOLE,
               LSTM_PEEPHOLE | LSTM_PROJ, LSTM_NO_FORGET | LSTM_PEEPHOLE | LSTM_PROJ)
#: kernel -> the flag values to test
FLAGS = {"lstm_forward": _LSTM_FLAGS, "lstm_backward": _LSTM_FLAGS, "rnn_forward": (0, RNN_RELU),
         "rnn_backward": (0, RNN_RELU)}
KERNELS = tuple(_SPECS)


def pointwise_inputs(rng, kernel, B, H, dtype, flags):
    """Random arguments for ``kernel`` as NumPy arrays: (args dict, names of output arrays).
    Outputs are NaN-poisoned; t is chosen so that rows of both kinds (active, ended) occur."""
    T = 6
    args, outs = {}, []
    for name, kind, *w in _SPECS[kernel]:
        if kind == "len":
            lengths = rng.integers(1, T + 1, size=B).astype(np.int32)
            if B > 1:
                lengths[0], lengths[-1] = 1, T  # row 0 inactive at t >= 1, the last active
            args[name] = lengths
        elif kind == "t":
            args[name] = int(rng.integers(1, T))
        elif kind == "flags":
            args[name] = flags
        else:
            shape = (3, H) if w[0] == "peep" else (H,) if w[0] == "bias" else (B, w[0] * H)
            if kind == "out":
                args[name] = np.full(shape, np.nan, dtype)
                outs.append(name)
            else:
                a = rng.standard_normal(shape) * 1.5
                if name == "gates":  # saved activations: sigmoid/tanh ranges
                    a = np.tanh(a)
                args[name] = a.astype(dtype)
                if kind == "io":
                    outs.append(name)
    return args, outs


def check_pointwise(pw, xp_asarray, to_numpy, rng, kernel, B, H, dtype, flags=0):
    """Run ``pw.<kernel>`` and the NumPy reference on the same random inputs; compare every
    output and in/out array (NaN where both left an element alone)."""
    args, outs = pointwise_inputs(rng, kernel, B, H, np.dtype(dtype), flags)
    want = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    getattr(ref, kernel)(**want)
    got = {k: (xp_asarray(v) if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    getattr(pw, kernel)(**got)
    rtol = RTOL[np.dtype(dtype).name]
    for name in outs:
        g, w = to_numpy(got[name]), want[name]
        where = f"{kernel}<{dtype}> B={B} H={H} flags={flags}: {name}"
        assert np.array_equal(np.isnan(g), np.isnan(w)), (
            f"{where}: {int((np.isnan(g) != np.isnan(w)).sum())} elements written differently "
            f"(NaN = never written)")
        scale = max(1.0, float(np.nanmax(np.abs(w))) if np.isfinite(w).any() else 1.0)
        err = float(np.nanmax(np.abs(g - w))) if np.isfinite(w).any() else 0.0
        assert err <= rtol * scale, f"{where}: max error {err:.3g} > {rtol:g} * {scale:.3g}"
    for name, v in args.items():  # inputs stay untouched
        if isinstance(v, np.ndarray) and name not in outs:
            assert np.array_equal(to_numpy(got[name]), v, equal_nan=True), f"{kernel}: input {name} changed"


# -- public API --------------------------------------------------------------------------------
#: (id, class name, constructor kwargs, T, B, lengths?) covering every cell and option
MODULE_CASES = [
    ("lstm", "LSTM", {}, 5, 3, False),
    ("lstm-noforget", "LSTM", {"forget_gate": False}, 4, 2, True),
    ("lstm-peephole", "LSTM", {"peephole": True}, 4, 3, True),
    ("lstm-proj", "LSTM", {"proj_size": 5}, 4, 3, True),
    ("lstm-2layer-bidir-peep-proj", "LSTM",
     {"num_layers": 2, "bidirectional": True, "peephole": True, "proj_size": 7}, 3, 3, True),
    ("lstm-2layer-dropout-batchfirst", "LSTM",
     {"num_layers": 2, "dropout": 0.25, "batch_first": True}, 4, 2, False),
    ("lstm-T1-B1", "LSTM", {"bidirectional": True}, 1, 1, False),
    ("gru", "GRU", {}, 5, 3, False),
    ("gru-2layer-bidir", "GRU", {"num_layers": 2, "bidirectional": True}, 4, 3, True),
    ("gru-nobias-B1", "GRU", {"bias": False}, 3, 1, False),
    ("rnn-tanh", "RNN", {"nonlinearity": "tanh", "bidirectional": True}, 5, 3, True),
    ("rnn-relu", "RNN", {"nonlinearity": "relu", "num_layers": 2}, 5, 3, True),
    ("rnn-relu-T1", "RNN", {"nonlinearity": "relu"}, 1, 2, False),
]


def _poisoned(ex):
    import copy
    ex = copy.copy(ex)
    ex.xp = PoisonXP(ex.xp)  # the GPU check's (gpulstm.gpucheck)
    return ex


def _run(m, p):
    """Forward + backward of module ``m`` on problem ``p``: dict of NumPy results."""
    to = m.ex.to_numpy
    lstm = isinstance(m, gl.LSTM)
    if lstm:
        y, (hn, cn) = m(p["x"], (p["h0"], p["c0"]), lengths=p["lengths"])
        dx = m.backward(p["gy"], p["gh"], p["gc"])
        out = {"y": y, "h_n": hn, "c_n": cn, "dx": dx, "dh0": m.grad_hx[0], "dc0": m.grad_hx[1]}
    else:
        y, hn = m(p["x"], p["h0"], lengths=p["lengths"])
        dx = m.backward(p["gy"], p["gh"])
        out = {"y": y, "h_n": hn, "dx": dx, "dh0": m.grad_hx}
    out = {k: to(v) for k, v in out.items()}
    out.update({"grad." + k: to(v) for k, v in m.grads.items()})
    return out


def check_module(backend, case, dtype, rng, I=6, H=37, to_backend=None, algo="auto", poison=False):
    """``case`` from MODULE_CASES on ``backend`` vs "numpy" (same weights, inputs, dropout
    seed); ``to_backend`` converts the NumPy inputs for the tested backend (default: none);
    ``algo``: the tested module's time-loop algorithm; ``poison``: every float buffer the engine
    allocates on the tested backend starts NaN (an element the kernels never write shows)."""
    cid, cls, kw, T, B, with_lengths = case
    kw = dict(kw)
    ref_m = getattr(gl, cls)(I, H, **kw, backend="numpy", dtype=dtype, seed=1)
    m = getattr(gl, cls)(I, H, **kw, backend=backend, dtype=dtype, seed=1, algo=algo)
    if poison:
        object.__setattr__(m, "ex", _poisoned(m.ex))  # past the fixed-attribute guard
    m.load_state_dict(ref_m.state_dict())
    Hs, LD = kw.get("proj_size") or H, ref_m.num_layers * ref_m.num_directions
    D = ref_m.num_directions
    bf = kw.get("batch_first", False)
    r = lambda *s: rng.standard_normal(s).astype(dtype)
    lengths = None
    if with_lengths:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
    p = dict(x=r(*((B, T, I) if bf else (T, B, I))), h0=r(LD, B, Hs), lengths=lengths,
             gy=r(*((B, T, D * Hs) if bf else (T, B, D * Hs))), gh=r(LD, B, Hs),
             c0=r(LD, B, H) if cls == "LSTM" else None, gc=r(LD, B, H) if cls == "LSTM" else None)
    want = _run(ref_m, p)
    conv = to_backend or (lambda a: a)
    got = _run(m, {k: (conv(v) if isinstance(v, np.ndarray) and k != "lengths" else v) for k, v in p.items()})
    assert set(got) == set(want)
    rtol = RTOL[np.dtype(dtype).name]
    for k, w in want.items():
        g = got[k]
        assert g.shape == w.shape and g.dtype == w.dtype, f"{cid} {k}: {g.shape} {g.dtype} vs {w.shape} {w.dtype}"
        assert np.isfinite(g).all(), f"{cid} {k}: non-finite values"
        scale = max(1.0, float(np.abs(w).max()))
        err = float(np.abs(g - w).max())
        assert err <= rtol * scale, f"{cid} <{dtype}> {k}: max error {err:.3g} > {rtol:g} * {scale:.3g}"

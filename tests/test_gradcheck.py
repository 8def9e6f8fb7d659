"""float64 central-difference gradient checks of backward() for every cell type: all
parameters, the input and the initial states, with and without lengths, multi-layer and
bidirectional, and the cell variants of the long-range memory work (peepholes, no forget gate)."""
import numpy as np
import pytest

import gpulstm as gl
from gpulstm import engine
from numgrad import numeric_grad

def _build(cell, I, H, **kw):
    if cell == "lstm":
        return gl.LSTM(I, H, backend="numpy", dtype="float64", seed=1, **kw)
    if cell == "gru":
        return gl.GRU(I, H, backend="numpy", dtype="float64", seed=1, **kw)
    return gl.RNN(I, H, nonlinearity=cell.split("_")[1], backend="numpy", dtype="float64", seed=1, **kw)


def _loss_fn(m, x, h0, c0, lengths, gy, gh, gc, dropout_seed):
    def loss():
        m._dropout_stream = engine.DropoutStream(dropout_seed)  # same dropout mask every call
        if c0 is not None:
            y, (hn, cn) = m(x, (h0, c0), lengths=lengths)
            return np.sum(y * gy) + np.sum(hn * gh) + np.sum(cn * gc)
        y, hn = m(x, h0, lengths=lengths)
        return np.sum(y * gy) + np.sum(hn * gh)
    return loss


def _check(analytic, numeric, name):
    scale = max(1.0, np.abs(numeric).max())
    err = np.abs(analytic - numeric).max()
    assert err <= 1e-7 * scale, f"{name}: max |analytic - numeric| = {err:.3g} (scale {scale:.3g})"


CASES = [
    ("lstm", dict()),
    ("lstm", dict(num_layers=2, bidirectional=True)),
    ("lstm", dict(proj_size=2, num_layers=2)),
    ("lstm", dict(peephole=True)),
    ("lstm", dict(forget_gate=False, bidirectional=True)),
    ("lstm", dict(num_layers=2, dropout=0.4)),
    ("gru", dict()),
    ("gru", dict(num_layers=2, bidirectional=True)),
    ("rnn_tanh", dict(num_layers=2, bidirectional=True)),
    ("rnn_relu", dict()),
]


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("cell,kw", CASES, ids=[f"{c}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for c, kw in CASES])
def test_gradients_match_finite_differences(cell, kw, with_lengths, rng):
    I, H, T, B = 3, 4, 5, 3
    m = _build(cell, I, H, **kw)
    Hs, LD = m.proj_size or H, m.num_layers * m.num_directions
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((LD, B, Hs)) * 0.5
    c0 = rng.standard_normal((LD, B, H)) * 0.5 if cell == "lstm" else None
    lengths = np.array([T, 2, 4]) if with_lengths else None
    gy = rng.standard_normal((T, B, m.num_directions * Hs))
    gh = rng.standard_normal((LD, B, Hs))
    gc = rng.standard_normal((LD, B, H)) if c0 is not None else None
    loss = _loss_fn(m, x, h0, c0, lengths, gy, gh, gc, dropout_seed=7)

    loss()
    dx = m.backward(gy, gh, gc) if c0 is not None else m.backward(gy, gh)
    grads = {k: v.copy() for k, v in m.grads.items()}
    grad_hx = m.grad_hx

    _check(dx, numeric_grad(loss, x), "x")
    if c0 is not None:
        _check(grad_hx[0], numeric_grad(loss, h0), "h0")
        _check(grad_hx[1], numeric_grad(loss, c0), "c0")
    else:
        _check(grad_hx, numeric_grad(loss, h0), "h0")
    params = m.parameters()
    assert set(grads) == set(params)
    for k, p in params.items():
        _check(grads[k], numeric_grad(loss, p), k)

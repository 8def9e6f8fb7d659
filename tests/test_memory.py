"""The gradient-flow probe (gpulstm.lab.memory) against torch autograd on every cell variant."""
import numpy as np
import pandas as pd
import pytest

from gpulstm.lab.memory import first_distance_below, gradient_flow, state_grads
from gpulstm.lab.train import CELLS, make_cell

torch = pytest.importorskip("torch")


def _torch_state_grads(model, x, u):
    """Brute force: the same recurrence step by step in torch (float64). Each state (h_k, c_k)
    enters the next step through a zero leaf added to it, whose .grad is dL/dh_k (dL/dc_k)."""
    sd = {k: torch.tensor(np.asarray(v)) for k, v in model.state_dict().items()}
    w_ih, w_hh = sd["weight_ih_l0"], sd["weight_hh_l0"]
    b = sd["bias_ih_l0"] + sd["bias_hh_l0"]
    H = model.hidden_size
    T, B = x.shape[:2]
    xs = torch.tensor(x)
    import gpulstm as gl
    cifg = isinstance(model, gl.CIFG)
    indrnn = isinstance(model, gl.IndRNN)
    lstm = hasattr(model, "forget_gate") or cifg
    h = torch.zeros(B, H, dtype=torch.float64)
    c = torch.zeros(B, H, dtype=torch.float64)
    eh, ec = [], []
    for t in range(T + 1):
        eh.append(torch.zeros(B, H, dtype=torch.float64, requires_grad=True))
        ec.append(torch.zeros(B, H, dtype=torch.float64, requires_grad=True))
        h, c = h + eh[t], c + ec[t]
        if t == T:
            break
        if cifg:  # gate order (f, g, o), i = 1 - f (Greff et al. 2017)
            a = xs[t] @ w_ih.T + h @ w_hh.T + b
            af, ag, ao = a.split(H, dim=1)
            f = torch.sigmoid(af)
            c = f * c + (1 - f) * torch.tanh(ag)
            h = torch.sigmoid(ao) * torch.tanh(c)
        elif indrnn:  # elementwise recurrence u * h (Li et al. 2018)
            a = xs[t] @ w_ih.T + w_hh * h + b
            h = torch.relu(a) if model.nonlinearity == "relu" else torch.tanh(a)
        elif lstm:
            a = xs[t] @ w_ih.T + h @ w_hh.T + b
            ai, af, ag, ao = a.split(H, dim=1)
            if model.peephole:
                p = sd["weight_peep_l0"]
                ai, af = ai + p[0] * c, af + p[1] * c
            i, g = torch.sigmoid(ai), torch.tanh(ag)
            f = torch.sigmoid(af) if model.forget_gate else torch.ones_like(af)
            c = f * c + i * g
            if model.peephole:
                ao = ao + p[2] * c
            h = torch.sigmoid(ao) * torch.tanh(c)
        elif model._spec.cell.gates == 3:  # GRU, PyTorch's formulation
            gx = xs[t] @ w_ih.T + sd["bias_ih_l0"]
            gh = h @ w_hh.T + sd["bias_hh_l0"]
            r = torch.sigmoid(gx[:, :H] + gh[:, :H])
            z = torch.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            n = torch.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - z) * n + z * h
        else:
            a = xs[t] @ w_ih.T + h @ w_hh.T + b
            h = torch.relu(a) if model.nonlinearity == "relu" else torch.tanh(a)
    (h @ torch.tensor(u)).sum().backward()
    def grads(leaves):  # [T+1, B, H], index k = state after k steps (None: unused, 0)
        return np.stack([np.zeros((B, H)) if e.grad is None else e.grad.numpy() for e in leaves])
    return grads(eh), (grads(ec) if lstm else None)


@pytest.mark.parametrize("cell", CELLS)
def test_state_grads_match_torch_autograd(cell, rng):
    T, B, H = 12, 3, 5
    m = make_cell(cell, 2, H, dtype="float64", seed=3, t_max=T)
    if cell == "lstm_peep":  # make the peepholes matter
        m.parameters()["weight_peep_l0"][...] = rng.uniform(-1, 1, (3, H))
    x = rng.standard_normal((T, B, 2))
    u = rng.standard_normal(H)
    grad_out = np.zeros((T, B, H))
    grad_out[-1] = u
    dh, dc = state_grads(m, x, grad_out)
    ref_h, ref_c = _torch_state_grads(m, x, u)
    np.testing.assert_allclose(dh, ref_h[1:], rtol=1e-10, atol=1e-13)
    g0 = m.grad_hx
    np.testing.assert_allclose(g0[0][0] if isinstance(g0, tuple) else g0[0], ref_h[0],
                               rtol=1e-10, atol=1e-13)
    if dc is not None:
        np.testing.assert_allclose(dc, ref_c[1:], rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(g0[1][0], ref_c[0], rtol=1e-10, atol=1e-13)


def test_gradient_flow_fields_and_distances():
    r = gradient_flow("lstm_fb1", 30, seed=0, hidden=8, batch=4)
    assert r["distance"].tolist() == list(range(31))
    assert r["ratio"][0] == 1.0 and r["ratio"].shape == (31,)
    assert r["dc_norm"].shape == (31,) and r["dc_norm"][0] == 0.0
    assert r["distance_1e3"] == first_distance_below(r["ratio"], 1e-3)
    assert gradient_flow("gru", 5, hidden=4, batch=2)["dc_norm"] is None
    assert first_distance_below([1.0, 0.5, 1e-4, 1e-7], 1e-3) == 2
    assert first_distance_below([1.0, 0.5], 1e-3) == 2  # T + 1 with T = 1: not within T


def test_tanh_rnn_gradient_vanishes_orders_of_magnitude_faster_than_lstm():
    """At initialisation (PyTorch default init, seed 0, H = 32), the gradient reaching 60 steps
    back is many orders of magnitude smaller for the tanh RNN than for the LSTM (forget bias 1)."""
    T = 60
    rnn = gradient_flow("rnn_tanh", T, seed=0)
    lstm = gradient_flow("lstm_fb1", T, seed=0)
    assert np.log10(lstm["ratio"][T]) - np.log10(rnn["ratio"][T]) > 5
    assert rnn["distance_1e3"] < lstm["distance_1e3"]
    assert rnn["distance_1e6"] < lstm["distance_1e6"]

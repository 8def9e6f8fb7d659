"""The IndRNN cell (Li et al. 2018: h = act(W_ih x + b + u * h_{t-1}), a recurrent weight
VECTOR u), brought through the cell plug-in (gpulstm.cells.IndRNNCell, kernels/cells/indrnn.cuh):
the first cell without a dense recurrence (no W_hh^T, no recurrent GEMM, dL/du a reduction).
Against a torch-written reference in float64 on every execution and loop (the emulated fused
and persistent runs launch the kernels instantiated for IndRnnCell, recorded), bidirectional,
two layers, variable lengths, every gradient; central finite differences; shapes."""
import numpy as np
import pytest

import gpulstm as gl
from conftest import backend_or_skip, record_kernels

torch = pytest.importorskip("torch")


def torch_indrnn(sd, x, lengths, h0, num_layers, D, act):
    T = x.shape[0]
    mask = (torch.arange(T)[:, None] < lengths[None, :]).to(x.dtype)[..., None]
    inp, hn = x, []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            wi, u = sd["weight_ih" + sfx], sd["weight_hh" + sfx]
            b = sd["bias_ih" + sfx] + sd["bias_hh" + sfx]
            h = h0[layer * D + d]
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                h_new = act(inp[t] @ wi.T + b + u * h)
                m = mask[t]
                h = m * h_new + (1 - m) * h
                ys[t] = m * h_new
            outs.append(torch.stack(ys))
            hn.append(h)
        inp = torch.cat(outs, dim=2)
    return inp, torch.stack(hn)


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
@pytest.mark.parametrize("backend,algo", [("numpy", "auto"), ("cpu", "auto"),
                                          ("emulated", "stepwise"), ("emulated", "fused"),
                                          ("emulated", "persistent")])
def test_indrnn_matches_torch_reference(backend, algo, nonlinearity, monkeypatch):
    backend_or_skip(backend)
    ran = record_kernels(monkeypatch)
    rng = np.random.default_rng()
    T, B, I, H, layers, D = 6, 4, 5, 7, 2, 2
    m = gl.IndRNN(I, H, layers, nonlinearity, bidirectional=True, backend=backend, algo=algo,
                  dtype="float64", seed=int(rng.integers(2**31)))
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 2, 5, 1])
    h0 = rng.standard_normal((layers * D, B, H))
    gy, gh = rng.standard_normal((T, B, D * H)), rng.standard_normal(h0.shape)
    y, h_n = m(x, h0, lengths=lengths)
    dx = m.backward(gy, gh)
    dh0 = m.grad_hx
    if backend == "emulated":
        want = set() if algo == "stepwise" else {f"{algo}_forward<IndRnnCell>",
                                                 f"{algo}_backward<IndRnnCell>"}
        assert ran == want

    sd = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in m.state_dict().items()}
    tx, th0 = (torch.tensor(a, requires_grad=True) for a in (x, h0))
    act = torch.relu if nonlinearity == "relu" else torch.tanh
    ty, th = torch_indrnn(sd, tx, torch.tensor(lengths), th0, layers, D, act)
    (ty * torch.tensor(gy)).sum().add((th * torch.tensor(gh)).sum()).backward()

    def close(a, b, what):
        np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=1e-12, atol=1e-12,
                                   err_msg=what)
    close(y, ty, "y")
    close(h_n, th, "h_n")
    close(dx, tx.grad, "dx")
    close(dh0, th0.grad, "dh0")
    assert set(m.grads) == set(sd)
    for k, v in sd.items():
        close(m.grads[k], v.grad, k)


def test_indrnn_finite_differences():
    rng = np.random.default_rng()
    m = gl.IndRNN(3, 4, nonlinearity="tanh", backend="numpy", dtype="float64",
                  seed=int(rng.integers(2**31)))
    x = rng.standard_normal((5, 2, 3))
    gy = rng.standard_normal((5, 2, 4))
    m(x)
    m.backward(gy)
    eps = 1e-6
    for key, p in m.parameters().items():
        for idx in [tuple(rng.integers(s) for s in p.shape) for _ in range(3)]:
            old = p[idx]
            p[idx] = old + eps
            up = (m(x)[0] * gy).sum()
            p[idx] = old - eps
            down = (m(x)[0] * gy).sum()
            p[idx] = old
            np.testing.assert_allclose(m.grads[key][idx], (up - down) / (2 * eps), rtol=1e-6,
                                       atol=1e-9, err_msg=f"{key}{idx}")


def test_indrnn_parameters_and_options():
    m = gl.IndRNN(5, 7, num_layers=2, bidirectional=True, backend="numpy")
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    assert shapes["weight_hh_l0"] == (7,) and shapes["weight_hh_l1_reverse"] == (7,)
    assert shapes["weight_ih_l0"] == (7, 5) and shapes["weight_ih_l1"] == (7, 14)
    assert shapes["bias_hh_l0"] == (7,)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        gl.IndRNN(5, 7, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"weight_hh_l0.*shape \(7,\)"):
        m.load_state_dict(dict(m.state_dict(), weight_hh_l0=np.ones((7, 7))))


@pytest.mark.parametrize("nonlinearity", ["relu", "tanh"])
def test_indrnn_torch_face_matches_numpy_face(nonlinearity):
    """gpulstm.torch.IndRNN (autograd; weight_hh_l{k} of shape (H,)) gives the numpy face's
    outputs and gradients."""
    import gpulstm.torch as gt
    rng = np.random.default_rng()
    T, B, I, H = 5, 3, 4, 6
    tm = gt.IndRNN(I, H, 2, nonlinearity, bidirectional=True, dtype=torch.float64)
    assert tm.weight_hh_l1_reverse.shape == (H,)
    m = gl.IndRNN(I, H, 2, nonlinearity, bidirectional=True, backend="numpy", dtype="float64")
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((T, B, I))
    gy = rng.standard_normal((T, B, 2 * H))
    tx = torch.tensor(x, requires_grad=True)
    ty, th = tm(tx)
    (ty * torch.tensor(gy)).sum().backward()
    y, h = m(x)
    dx = m.backward(gy)
    for a, b in ((y, ty), (h, th), (dx, tx.grad)):
        np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=1e-12, atol=1e-13)
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(m.grads[k], p.grad.numpy(), rtol=1e-12, atol=1e-13, err_msg=k)
    assert ("nonlinearity='tanh'" in repr(tm)) == (nonlinearity == "tanh")

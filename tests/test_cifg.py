"""The CIFG cell (coupled input-forget gate LSTM, i = 1 - f), brought through the cell plug-in
alone (gpulstm.cells.CIFGCell and kernels/cells/cifg.cuh): against a torch-written reference
cell in float64 on every execution and loop (the emulated fused and persistent runs launch the
kernels instantiated for CifgCell, recorded), bidirectional, two layers, variable lengths,
every gradient; and against central finite differences of its own forward."""
import numpy as np
import pytest

import gpulstm as gl
from conftest import backend_or_skip, record_kernels

torch = pytest.importorskip("torch")


def torch_cifg(sd, x, lengths, h0, c0, num_layers, D):
    """y, h_n, c_n of the CIFG written in torch (autograd gives the reference gradients):
    f = σ(a_f), g = tanh(a_g), o = σ(a_o), c = f c + (1 - f) g, h = o tanh(c); rows past their
    length keep their state and output 0 (torch.nn's packed-sequence semantics)."""
    T, B, _ = x.shape
    H = h0.shape[2]
    mask = (torch.arange(T)[:, None] < lengths[None, :]).to(x.dtype)[..., None]  # [T,B,1]
    inp, hn, cn = x, [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            wi, wh = sd["weight_ih" + sfx], sd["weight_hh" + sfx]
            b = sd["bias_ih" + sfx] + sd["bias_hh" + sfx]
            h, c = h0[layer * D + d], c0[layer * D + d]
            ys = [None] * T
            for t in (range(T - 1, -1, -1) if d else range(T)):
                a = inp[t] @ wi.T + h @ wh.T + b
                f, g, o = torch.sigmoid(a[:, :H]), torch.tanh(a[:, H:2 * H]), torch.sigmoid(a[:, 2 * H:])
                c_new = f * c + (1 - f) * g
                h_new = o * torch.tanh(c_new)
                m = mask[t]
                c = m * c_new + (1 - m) * c
                h = m * h_new + (1 - m) * h
                ys[t] = m * h_new
            outs.append(torch.stack(ys))
            hn.append(h)
            cn.append(c)
        inp = torch.cat(outs, dim=2)
    return inp, torch.stack(hn), torch.stack(cn)


@pytest.mark.parametrize("backend,algo", [("numpy", "auto"), ("cpu", "auto"),
                                          ("emulated", "fused"), ("emulated", "persistent")])
def test_cifg_matches_torch_reference(backend, algo, monkeypatch):
    backend_or_skip(backend)
    ran = record_kernels(monkeypatch)
    rng = np.random.default_rng()
    T, B, I, H, layers, D = 6, 4, 5, 7, 2, 2
    m = gl.CIFG(I, H, num_layers=layers, bidirectional=True, backend=backend, algo=algo,
                dtype="float64", seed=int(rng.integers(2**31)))
    x = rng.standard_normal((T, B, I))
    lengths = np.array([6, 2, 5, 1])
    h0 = rng.standard_normal((layers * D, B, H))
    c0 = rng.standard_normal((layers * D, B, H))
    gy, gh, gc = (rng.standard_normal(s) for s in ((T, B, D * H), h0.shape, c0.shape))
    y, (h_n, c_n) = m(x, (h0, c0), lengths=lengths)
    dx = m.backward(gy, gh, gc)
    dh0, dc0 = m.grad_hx
    if backend == "emulated":  # the cell's own kernels ran, nothing else
        assert ran == {f"{algo}_forward<CifgCell>", f"{algo}_backward<CifgCell>"}

    sd = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in m.state_dict().items()}
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    ty, th, tc = torch_cifg(sd, tx, torch.tensor(lengths), th0, tc0, layers, D)
    (ty * torch.tensor(gy)).sum().add((th * torch.tensor(gh)).sum()).add(
        (tc * torch.tensor(gc)).sum()).backward()

    def close(a, b, what):
        np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=1e-12, atol=1e-12,
                                   err_msg=what)
    close(y, ty, "y")
    close(h_n, th, "h_n")
    close(c_n, tc, "c_n")
    close(dx, tx.grad, "dx")
    close(dh0, th0.grad, "dh0")
    close(dc0, tc0.grad, "dc0")
    assert set(m.grads) == set(sd)
    for k, v in sd.items():
        close(m.grads[k], v.grad, k)


def test_cifg_finite_differences():
    rng = np.random.default_rng()
    m = gl.CIFG(3, 4, backend="numpy", dtype="float64", seed=int(rng.integers(2**31)))
    x = rng.standard_normal((5, 2, 3))
    gy = rng.standard_normal((5, 2, 4))
    m(x)
    dx = m.backward(gy)
    grads = {k: np.array(v) for k, v in m.grads.items()}
    eps = 1e-6

    def loss():
        return float((m(x)[0] * gy).sum())

    def numeric(a):  # central differences of loss() w.r.t. every element of a (in place)
        out = np.empty_like(a)
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            a[idx] = keep + eps
            up = loss()
            a[idx] = keep - eps
            out[idx] = (up - loss()) / (2 * eps)
            a[idx] = keep
        return out
    np.testing.assert_allclose(dx, numeric(x), rtol=1e-6, atol=1e-8)
    for k, p in m._params.items():
        np.testing.assert_allclose(grads[k], numeric(p), rtol=1e-6, atol=1e-8, err_msg=k)


def test_cifg_parameters_are_three_gate_blocks():
    m = gl.CIFG(5, 7, backend="numpy")
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"weight_ih_l0": (21, 5), "weight_hh_l0": (21, 7), "bias_ih_l0": (21,),
                      "bias_hh_l0": (21,)}
    with pytest.raises(ValueError, match="proj_size"):
        gl.CIFG(5, 7, proj_size=2, backend="numpy")


def test_cifg_torch_face_matches_numpy_face():
    """gpulstm.torch.CIFG (autograd) gives the numpy face's outputs and gradients."""
    import gpulstm.torch as gt
    rng = np.random.default_rng()
    T, B, I, H = 5, 3, 4, 6
    tm = gt.CIFG(I, H, num_layers=2, bidirectional=True, dtype=torch.float64)
    m = gl.CIFG(I, H, num_layers=2, bidirectional=True, backend="numpy", dtype="float64")
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((T, B, I))
    gy = rng.standard_normal((T, B, 2 * H))
    tx = torch.tensor(x, requires_grad=True)
    ty, (th, tc) = tm(tx)
    (ty * torch.tensor(gy)).sum().backward()
    y, (h, c) = m(x)
    dx = m.backward(gy)
    for a, b in ((y, ty), (h, th), (c, tc), (dx, tx.grad)):
        np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), rtol=1e-12, atol=1e-13)
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(m.grads[k], p.grad.numpy(), rtol=1e-12, atol=1e-13, err_msg=k)

"""Step cells: gpulstm.torch.LSTMCell/GRUCell/RNNCell against torch.nn's cells and
gpulstm.LSTMCell/GRUCell/RNNCell (the NumPy face) against the same, in float64: a loop over
T steps with fresh random inputs, outputs and every gradient (inputs of every step, the
initial state, each parameter), batched and unbatched, with and without bias and initial
state; initialisation and state dicts both ways; bad input."""
import copy
import pickle

import numpy as np
import pytest
import torch

import gpulstm as gl
import gpulstm.cells
import gpulstm.torch as gt

F64 = torch.float64
KINDS = {"lstm": (gt.LSTMCell, torch.nn.LSTMCell, gl.LSTMCell, {}),
         "gru": (gt.GRUCell, torch.nn.GRUCell, gl.GRUCell, {}),
         "rnn_tanh": (gt.RNNCell, torch.nn.RNNCell, gl.RNNCell, {"nonlinearity": "tanh"}),
         "rnn_relu": (gt.RNNCell, torch.nn.RNNCell, gl.RNNCell, {"nonlinearity": "relu"})}
TOL = 1e-12


def pair(kind, I, H, seed, **kw):
    ours_cls, ref_cls, _, opts = KINDS[kind]
    torch.manual_seed(seed)
    ours = ours_cls(I, H, dtype=F64, **opts, **kw)
    torch.manual_seed(seed)
    ref = ref_cls(I, H, dtype=F64, **opts, **{k: v for k, v in kw.items() if k != "backend"})
    return ours, ref


def close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= TOL * (1 + b.abs().max().item()), err


def unroll(cell, xs, state, lstm):
    """T steps; returns every step's outputs (h, and c for LSTM) as one flat list."""
    outs = []
    for x in xs:
        state = cell(x, state)
        outs += list(state) if lstm else [state]
    return outs


@pytest.mark.parametrize("backend", [None, "numpy"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", ["batched", "unbatched", "no_hx"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_cells_match_torch_over_t_steps(kind, shape, bias, backend):
    seed = 100 + list(KINDS).index(kind) * 7 + (shape == "unbatched") * 3 + bias
    ours, ref = pair(kind, 3, 5, seed, bias=bias, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    T, B, lstm = 4, 2, kind == "lstm"
    lead = () if shape == "unbatched" else (B,)
    xs = [torch.randn(*lead, 3, generator=gen, dtype=F64) for _ in range(T)]
    hx = [] if shape == "no_hx" else [torch.randn(*lead, 5, generator=gen, dtype=F64)
                                      for _ in range(2 if lstm else 1)]
    res = []
    for m in (ours, ref):
        xl = [x.clone().requires_grad_() for x in xs]
        hl = [h.clone().requires_grad_() for h in hx]
        state = None if not hl else (tuple(hl) if lstm else hl[0])
        outs = unroll(m, xl, state, lstm)
        if not res:
            gouts = [torch.randn(o.shape, generator=gen, dtype=F64) for o in outs]
        grads = torch.autograd.grad(outs, xl + hl + list(m.parameters()), gouts)
        res.append(([o.detach() for o in outs], grads))
    (o1, g1), (o2, g2) = res
    assert len(o1) == len(o2) and len(g1) == len(g2) == T + len(hx) + (4 if bias else 2)
    for a, b in zip(o1 + list(g1), o2 + list(g2)):
        close(a, b)


@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_cells_gradcheck(kind):
    ours, _ = pair(kind, 2, 3, 5)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 2, generator=gen, dtype=F64, requires_grad=True)
    h = torch.randn(2, 3, generator=gen, dtype=F64, requires_grad=True)
    c = torch.randn(2, 3, generator=gen, dtype=F64, requires_grad=True)
    if kind == "lstm":
        f = lambda x, h, c, *p: torch.cat(ours(x, (h, c)))  # noqa: E731
        args = (x, h, c)
    else:
        f = lambda x, h, *p: ours(x, h)  # noqa: E731
        args = (x, h)
    assert torch.autograd.gradcheck(f, args + tuple(ours.parameters()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_torch_cells_are_torch_modules_with_torchs_parameters(kind):
    """Same names, shapes and initialisation under torch.manual_seed as torch.nn's cells;
    state dicts load both ways; the torch face's class is not the engine's cell math."""
    ours, ref = pair(kind, 3, 4, 9)
    assert isinstance(ours, torch.nn.Module)
    assert type(ours) is not getattr(gpulstm.cells, type(ours).__name__, None)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (n, p), (m, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert n == m and p.shape == q.shape and torch.equal(p, q), n
    nob, refb = pair(kind, 3, 4, 9, bias=False)
    assert list(nob.state_dict()) == list(refb.state_dict()) == ["weight_ih", "weight_hh"]
    assert nob.bias_ih is None and refb.bias_ih is None
    fresh = type(ours)(3, 4, dtype=F64, **KINDS[kind][3])
    fresh.load_state_dict(ref.state_dict())
    ref.load_state_dict(fresh.state_dict())
    x = torch.randn(2, 3, dtype=F64)
    a, b = fresh(x), ref(x)
    for u, v in zip(*(((a,), (b,)) if kind != "lstm" else (a, b))):
        close(u, v)
    assert repr(ours).startswith(type(ours).__name__ + "(3, 4")
    back = pickle.loads(pickle.dumps(ours))
    close(back(x) if kind != "lstm" else back(x)[1], ours(x) if kind != "lstm" else ours(x)[1])


def test_torch_cells_empty_batch_and_no_grad():
    ours, ref = pair("lstm", 3, 4, 2)
    x = torch.randn(0, 3, dtype=F64, requires_grad=True)
    h, c = ours(x)
    hr, cr = ref(x)
    assert h.shape == hr.shape == c.shape == (0, 4) and h.requires_grad
    (h.sum() + c.sum()).backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in ours.parameters())
    with torch.no_grad():
        y = ours(torch.randn(2, 3, dtype=F64))[0]
    assert y.grad_fn is None and y.shape == (2, 4)


def test_torch_cells_bad_input():
    m = gt.LSTMCell(3, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"LSTMCell: input must be 2-D \(B, 3\) or 1-D"):
        m(torch.randn(5, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"input must have shape \(\*, 3\)"):
        m(torch.randn(2, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"hx\[1\] must have shape \(2, 4\)"):
        m(torch.randn(2, 3, dtype=F64), (torch.randn(2, 4, dtype=F64), torch.randn(1, 4, dtype=F64)))
    with pytest.raises(ValueError, match=r"hx\[0\] must have shape \(4\)"):  # unbatched input, batched state
        m(torch.randn(3, dtype=F64), (torch.randn(1, 4, dtype=F64), torch.randn(1, 4, dtype=F64)))
    with pytest.raises(TypeError, match="tuple"):
        m(torch.randn(2, 3, dtype=F64), torch.randn(2, 4, dtype=F64))
    with pytest.raises(TypeError, match="dtype float64"):
        m(torch.randn(2, 3))
    g = gt.GRUCell(3, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 4\)"):
        g(torch.randn(2, 3, dtype=F64), torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="nonlinearity"):
        gt.RNNCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(TypeError, match="hidden_size"):
        gt.GRUCell(3, 4.0)


# -- the NumPy face --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "cpu", "emulated"])
@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("kind", list(KINDS))
def test_numpy_cells_match_torch_over_t_steps(kind, unbatched, backend):
    """gpulstm.<Kind>Cell: T forwards, then BPTT by hand (each step recomputed with forward,
    then backward with the gradient flowing into its new state), against torch.nn's cell."""
    _, ref_cls, cls, opts = KINDS[kind]
    seed = 300 + list(KINDS).index(kind) * 5 + unbatched
    try:
        ours = cls(3, 5, dtype="float64", backend=backend, **opts)
    except gl.BackendUnavailable as e:
        pytest.skip(str(e))
    torch.manual_seed(seed)
    ref = ref_cls(3, 5, dtype=F64, **opts)
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    rng = np.random.default_rng(seed)
    T, lstm = 4, kind == "lstm"
    lead = () if unbatched else (2,)
    xs = [rng.standard_normal((*lead, 3)) for _ in range(T)]
    s0 = [rng.standard_normal((*lead, 5)) for _ in range(2 if lstm else 1)]
    gouts = [[rng.standard_normal((*lead, 5)) for _ in s0] for _ in range(T)]
    # torch
    xl = [torch.tensor(x, requires_grad=True) for x in xs]
    sl = [torch.tensor(s, requires_grad=True) for s in s0]
    state, outs = (tuple(sl) if lstm else sl[0]), []
    for x in xl:
        state = ref(x, state)
        outs += list(state) if lstm else [state]
    torch.autograd.backward(outs, [torch.tensor(g) for gs in gouts for g in gs])
    # ours: forward, keeping each step's input state
    states, state = [], (tuple(s0) if lstm else s0[0])
    for t, x in enumerate(xs):
        states.append(state)
        state = ours(x, state)
        got = list(state) if lstm else [state]
        for a, b in zip(got, outs[len(got) * t: len(got) * (t + 1)]):
            np.testing.assert_allclose(a, b.detach().numpy(), rtol=0, atol=TOL)
    carry = [np.zeros_like(s) for s in s0]
    grads = {k: 0 for k in ours.state_dict()}
    dxs = [None] * T
    for t in reversed(range(T)):
        ours(xs[t], states[t])
        gs = [g + c for g, c in zip(gouts[t], carry)]
        dxs[t] = ours.backward(*gs)
        carry = list(ours.grad_hx) if lstm else [ours.grad_hx]
        grads = {k: grads[k] + ours.grads[k] for k in grads}
    for a, b in zip(dxs + carry, xl + sl):
        np.testing.assert_allclose(a, b.grad.numpy(), rtol=0, atol=TOL)
    for k, p in ref.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=0, atol=TOL, err_msg=k)


def test_numpy_cells_surface_and_bad_input():
    c = gl.GRUCell(3, 4, bias=False, dtype="float64", backend="numpy", seed=1)
    assert list(c.state_dict()) == ["weight_ih", "weight_hh"]
    assert c.state_dict()["weight_ih"].shape == (12, 3)
    assert gl.LSTMCell is not gpulstm.cells.LSTMCell and repr(c).startswith("GRUCell(3, 4")
    x = np.random.default_rng(0).standard_normal((2, 3))
    h = c(x)
    assert h.shape == (2, 4)
    assert np.array_equal(copy.deepcopy(c)(x), h)
    with pytest.raises(ValueError, match=r"GRUCell: x must be 2-D \(B, 3\) or 1-D \(3,\)"):
        c(x[None])
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 4\)"):
        c(x, np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"grad_h must have shape \(2, 4\)"):
        c.backward(np.ones((4,)))
    with pytest.raises(TypeError, match="requires grad"):
        c(torch.randn(2, 3, dtype=F64, requires_grad=True))
    with pytest.raises(RuntimeError, match="needs a successful forward"):
        gl.RNNCell(3, 4, backend="numpy").backward(np.ones((2, 4), np.float32))
    lstm = gl.LSTMCell(3, 4, dtype="float64", backend="numpy")
    with pytest.raises(TypeError, match=r"tuple \(h, c\)"):
        lstm(x, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="nonlinearity"):
        gl.RNNCell(3, 4, nonlinearity="sigmoid")

"""gpulstm.torch: the drop-in torch.nn.LSTM/GRU/RNN on gpulstm's engine.

Parity with torch.nn (outputs, states, every gradient) and torch.autograd.gradcheck in float64
for each cell and option; a 20-step training loop against torch.nn.LSTM; autograd semantics
(several forwards, retain_graph, in-place edits, double backward, no_grad); zero-copy hand-over
on the CPU; saving, copying, errors. GPU tests (``-m gpu``) repeat the essentials on CUDA
tensors and check zero-copy by data pointers and the stream used."""
import copy
import gc
import io
import pathlib
import pickle
import subprocess
import sys
import weakref
import zlib

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import gpulstm as gl
import gpulstm.engine
import gpulstm.torch as gt
from gpulstm.backends import BackendUnavailable, get_backend
from gpulstm.backends.kernel_loop import KernelLoop
from conftest import backend_or_skip

ROOT = pathlib.Path(__file__).resolve().parents[1]
F64 = torch.float64
CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def make_pair(cell, I, H, seed=0, device="cpu", **kw):
    """(gpulstm.torch module, torch.nn module) with the same weights: both built after
    torch.manual_seed(seed), which must give equal initialisations."""
    ours_cls, ref_cls = {"lstm": (gt.LSTM, torch.nn.LSTM), "gru": (gt.GRU, torch.nn.GRU)}.get(
        cell, (gt.RNN, torch.nn.RNN))
    if cell.startswith("rnn"):
        kw["nonlinearity"] = cell.split("_")[1]
    kw.setdefault("dtype", F64)
    torch.manual_seed(seed)
    ours = ours_cls(I, H, device=device, **kw)
    torch.manual_seed(seed)
    ref = ref_cls(I, H, device=device, **kw)
    return ours, ref


def randn(*shape, gen, device="cpu", requires_grad=True):
    return torch.randn(*shape, generator=gen, dtype=F64).to(device).requires_grad_(requires_grad)


def flat_outputs(out):
    """(y, h) or (y, (h, c)) -> list of tensors; a PackedSequence output -> its data."""
    y, h = out
    y = y.data if isinstance(y, PackedSequence) else y
    return [y, *(h if isinstance(h, tuple) else (h,))]


def run_both(ours, ref, inputs, make_input, gen):
    """Forward both modules on ``make_input(*inputs)`` and back-propagate the same random
    output gradients; returns (outputs, gradients w.r.t. inputs and parameters) per module."""
    res = []
    for m in (ours, ref):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        outs = flat_outputs(m(*make_input(*leaves)))
        if not res:
            g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
            gouts = [torch.randn(o.shape, generator=g, dtype=F64).to(o.device) for o in outs]
        grads = torch.autograd.grad(outs, leaves + list(m.parameters()), gouts)
        res.append(([o.detach() for o in outs], grads))
    return res


def assert_all_close(a, b, tol):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, (i, u.shape, v.shape)
        err = (u - v).abs().max().item() if u.numel() else 0.0
        assert err <= tol * (1 + v.abs().max().item()), (i, err)


# (cell options, input kind): every option once, several combined
OPTIONS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True),
    dict(bias=False),
    dict(batch_first=True),
    dict(proj_size=2),
    dict(proj_size=2, num_layers=2, bidirectional=True),
]
KINDS = ["tensor", "hx", "packed", "packed_hx", "unbatched"]


def _cases():
    for cell in CELLS:
        for opts in OPTIONS:
            if opts.get("proj_size") and cell != "lstm":
                continue
            for kind in KINDS:
                yield cell, opts, kind


def problem(m, kind, gen, T=5, B=3, device="cpu"):
    """(inputs, make_input) for a forward of ``m``: the leaves to differentiate and how they
    become the module's arguments."""
    LD = m.num_layers * (2 if m.bidirectional else 1)
    Hs = m.proj_size or m.hidden_size
    lstm = isinstance(m, (gt.LSTM, torch.nn.LSTM))
    unbatched = kind == "unbatched"
    xshape = (T, m.input_size) if unbatched else ((B, T) if m.batch_first else (T, B)) + (m.input_size,)
    x = randn(*xshape, gen=gen, device=device)
    inputs = [x]
    with_hx = kind in ("hx", "packed_hx", "unbatched")
    if with_hx:
        hshape = (LD,) if unbatched else (LD, B)
        inputs.append(randn(*hshape, Hs, gen=gen, device=device))
        if lstm:
            inputs.append(randn(*hshape, m.hidden_size, gen=gen, device=device))
    lengths = torch.tensor([T, 2, 4][:B] + [1] * max(0, B - 3)) if kind.startswith("packed") else None

    def make_input(x, *hx):
        inp = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=m.batch_first,
                                                             enforce_sorted=False)
        if not hx:
            return (inp,)
        return (inp, tuple(hx) if lstm else hx[0])

    return inputs, make_input


@pytest.mark.parametrize("cell,opts,kind", list(_cases()),
                         ids=lambda v: str(v).replace(" ", "").replace("'", ""))
def test_parity_with_torch_nn(cell, opts, kind):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{cell}{opts}{kind}".encode()))
    ours, ref = make_pair(cell, 3, 4, **opts)
    inputs, make_input = problem(ours, kind, gen)
    (o1, g1), (o2, g2) = run_both(ours, ref, inputs, make_input, gen)
    assert_all_close(o1, o2, 1e-12)
    assert_all_close(g1, g2, 1e-11)


def _gradcheck(m, inputs, make_input, seed_dropout=None, **kw):
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    n = len(inputs)

    def fn(*args):
        if seed_dropout is not None:
            torch.manual_seed(seed_dropout)  # the same dropout masks at every evaluation
        out = torch.func.functional_call(m, dict(zip(names, args[n:])), make_input(*args[:n]))
        return tuple(flat_outputs(out))

    return torch.autograd.gradcheck(fn, tuple(inputs) + tuple(params), **kw)


GRADCHECK = [(cell, opts, kind) for cell in CELLS
             for opts, kind in [(dict(), "hx"),
                                (dict(num_layers=2, bidirectional=True), "packed_hx"),
                                (dict(batch_first=True, bias=False), "packed"),
                                (dict(num_layers=2), "unbatched")]] + [
    ("lstm", dict(proj_size=2, num_layers=2, bidirectional=True), "packed_hx"),
    ("lstm", dict(proj_size=1), "hx"),
]


@pytest.mark.parametrize("cell,opts,kind", GRADCHECK, ids=lambda v: str(v).replace(" ", "").replace("'", ""))
def test_gradcheck(cell, opts, kind):
    gen = torch.Generator().manual_seed(1)
    m, _ = make_pair(cell, 2, 3, **opts)
    inputs, make_input = problem(m, kind, gen, T=4, B=3)
    assert _gradcheck(m, inputs, make_input)


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_with_dropout(cell):
    gen = torch.Generator().manual_seed(2)
    m, _ = make_pair(cell, 2, 3, num_layers=3, dropout=0.4)
    inputs, make_input = problem(m, "hx", gen, T=3, B=2)
    assert _gradcheck(m, inputs, make_input, seed_dropout=7)


def test_dropout_train_eval_and_seed():
    gen = torch.Generator().manual_seed(3)
    ours, ref = make_pair("lstm", 3, 8, num_layers=3, dropout=0.5)
    x = randn(6, 4, 3, gen=gen, requires_grad=False)
    torch.manual_seed(5)
    a = ours(x)[0]
    torch.manual_seed(5)
    b = ours(x)[0]
    c = ours(x)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)  # masks follow torch's generator
    ours.eval()
    ref.eval()
    assert_all_close([ours(x)[0]], [ref(x)[0]], 1e-12)  # eval: no dropout, as torch


def test_init_and_state_dict_match_torch_both_ways():
    for cell in CELLS:
        for opts in (dict(num_layers=2, bidirectional=True), dict(bias=False)):
            ours, ref = make_pair(cell, 3, 4, **opts)
            so, sr = ours.state_dict(), ref.state_dict()
            assert list(so) == list(sr)
            assert all(torch.equal(so[k], sr[k]) for k in sr)
            assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ours, ref = make_pair("lstm", 3, 5, proj_size=2, num_layers=2, seed=1)
    other, _ = make_pair("lstm", 3, 5, proj_size=2, num_layers=2, seed=2)
    ours.load_state_dict(other.state_dict())
    ref.load_state_dict(ours.state_dict())
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in ref.state_dict().items())


def test_training_loop_matches_torch_lstm_for_20_steps():
    """Embedding -> 2-layer LSTM -> linear, Adam, float64: the drop-in and torch.nn.LSTM from
    the same weights and batches stay within 1e-10 for 20 optimizer steps."""
    V, E, H = 11, 6, 8

    class Net(torch.nn.Module):
        def __init__(self, rnn_cls):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(V, E, dtype=F64)
            self.rnn = rnn_cls(E, H, num_layers=2, batch_first=True, dtype=F64)
            self.head = torch.nn.Linear(H, V, dtype=F64)

        def forward(self, tokens, state=None):
            y, state = self.rnn(self.emb(tokens), state)
            return self.head(y), state

    ours, ref = Net(gt.LSTM), Net(torch.nn.LSTM)
    ref.load_state_dict(ours.state_dict())  # the drop-in's state_dict loads into torch's
    opts = [torch.optim.Adam(m.parameters(), lr=3e-2) for m in (ours, ref)]
    gen = torch.Generator().manual_seed(0)
    states = [None, None]
    worst, first = 0.0, None
    for step in range(20):
        start = torch.randint(0, V, (4, 1), generator=gen)
        tokens = (start + torch.arange(9)) % V  # next token = this one + 1: learnable
        losses = []
        for i, (m, opt) in enumerate(zip((ours, ref), opts)):
            opt.zero_grad()
            logits, st = m(tokens[:, :-1], states[i])
            states[i] = tuple(s.detach() for s in st)  # state carried across batches (TBPTT)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tokens[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        worst = max(worst, abs(losses[0] - losses[1]))
        first = losses[0] if first is None else first
        for (k, p), q in zip(ours.named_parameters(), ref.parameters()):
            worst = max(worst, (p - q).abs().max().item())
    print(f"worst difference over 20 steps: {worst:.3g}")
    assert worst < 1e-10, worst
    assert losses[0] < first - 0.5, (first, losses[0])  # it learned
    ours.load_state_dict(ref.state_dict())  # and torch's loads into the drop-in


def test_several_forwards_before_one_backward():
    gen = torch.Generator().manual_seed(4)
    ours, ref = make_pair("gru", 3, 4, num_layers=2)
    x1, x2 = randn(5, 2, 3, gen=gen), randn(7, 3, 3, gen=gen)
    grads = []
    for m in (ours, ref):
        a = m(x1)[0]
        with torch.no_grad():
            m(x2)  # a validation batch in between changes nothing
        b = m(x2)[0]
        grads.append(torch.autograd.grad((a ** 2).sum() + b.sum(), [x1, x2, *m.parameters()]))
    assert_all_close(grads[0], grads[1], 1e-12)


def test_retain_graph_and_second_backward_error():
    gen = torch.Generator().manual_seed(5)
    m, _ = make_pair("lstm", 3, 4)
    x = randn(4, 2, 3, gen=gen)
    loss = m(x)[0].sum()
    g1 = torch.autograd.grad(loss, x, retain_graph=True)[0]
    g2 = torch.autograd.grad(loss, x)[0]
    assert torch.equal(g1, g2)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        torch.autograd.grad(loss, x)


def test_in_place_edit_before_backward_is_caught():
    gen = torch.Generator().manual_seed(6)
    m, _ = make_pair("lstm", 3, 4)
    x = randn(4, 2, 3, gen=gen, requires_grad=False)
    loss = m(x)[0].sum()
    with torch.no_grad():
        m.weight_hh_l0.mul_(2)  # e.g. an optimizer step before backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_double_backward_raises_clear_error():
    gen = torch.Generator().manual_seed(7)
    m, _ = make_pair("lstm", 3, 4)
    x = randn(4, 2, 3, gen=gen)
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward.*not supported"):
        g.sum().backward()


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_empty_batch_as_torch(cell, batch_first):
    """B = 0: empty outputs of torch.nn's shapes, and zero gradients for the parameters and an
    empty one for the input, as torch.nn gives; T = 0 stays an error."""
    ours, ref = make_pair(cell, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first)
    shape = (0, 5, 3) if batch_first else (5, 0, 3)
    x, xr = torch.randn(shape, dtype=F64, requires_grad=True), None
    xr = x.detach().clone().requires_grad_()
    out, outr = ours(x), ref(xr)
    flat = lambda o: [o[0], *(o[1] if isinstance(o[1], tuple) else (o[1],))]
    for a, b in zip(flat(out), flat(outr)):
        assert a.shape == b.shape and a.requires_grad
    sum(t.sum() for t in flat(out)).backward()
    sum(t.sum() for t in flat(outr)).backward()
    assert x.grad.shape == xr.grad.shape == shape
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, q.grad), name
    with pytest.raises(ValueError, match="at least one time step"):
        ours(torch.randn((3, 0, 3) if batch_first else (0, 3, 3), dtype=F64))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_dropout_one_zeroes_between_layers_as_torch(cell):
    """dropout=1.0 is accepted as by torch.nn and zeroes every element between layers: in
    training the upper layer sees zeros, so outputs and every gradient equal torch's."""
    gen = torch.Generator().manual_seed(4)
    ours, ref = make_pair(cell, 3, 5, num_layers=2, dropout=1.0)
    x = randn(6, 2, 3, gen=gen)
    xr = x.detach().clone().requires_grad_()
    y, yr = ours(x)[0], ref(xr)[0]
    assert_all_close([y], [yr], 1e-12)
    dy = randn(*y.shape, gen=gen, requires_grad=False)
    y.backward(dy)
    yr.backward(dy)
    assert_all_close([x.grad] + [p.grad for p in ours.parameters()],
                     [xr.grad] + [p.grad for p in ref.parameters()], 1e-12)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\]"):
        gt.LSTM(3, 4, num_layers=2, dropout=1.5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_gradient_penalty_raises_instead_of_a_silently_constant_gradient(cell):
    """A gradient penalty on the weights of y.sum(): the incoming gradient (ones) needs no
    grad, yet create_graph=True asks for a graph. torch.nn gives gradients that require grad;
    gpulstm must too, and differentiating them must raise, never give a zero penalty gradient."""
    gen = torch.Generator().manual_seed(11)
    m, _ = make_pair(cell, 3, 4)
    x = randn(5, 2, 3, gen=gen)
    loss = m(x)[0].sum()
    grads = torch.autograd.grad(loss, list(m.parameters()), create_graph=True)
    assert all(g.requires_grad for g in grads)
    with pytest.raises(RuntimeError, match="double backward.*not supported"):
        (loss + sum(g.pow(2).sum() for g in grads)).backward()
    # first-order use of those gradients stays fine
    torch.testing.assert_close(torch.autograd.grad(m(x)[0].sum(), m.weight_ih_l0)[0],
                               grads[0].detach(), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_saves_nothing(mode, monkeypatch):
    kept = []
    real = gpulstm.engine.forward

    def spy(*a, **k):
        y, h, c, ctx = real(*a, **k)
        # inference: nothing saved at all (save=False); else the gates until dropped
        kept.append((weakref.ref(ctx),) + (() if ctx.saved is None else
                                           (weakref.ref(ctx.saved[0][0]["gates"]),)))
        return y, h, c, ctx

    monkeypatch.setattr(gpulstm.engine, "forward", spy)
    m, ref = make_pair("lstm", 3, 4)
    x = randn(5, 2, 3, gen=torch.Generator().manual_seed(8))
    with getattr(torch, mode)():
        y, (h, c) = m(x)
        y_ref = ref(x)[0]
    gc.collect()
    assert y.grad_fn is None and not y.requires_grad
    assert kept and all(r() is None for pair in kept for r in pair)
    assert_all_close([y], [y_ref], 1e-12)
    # with autograd the saved arrays live until the backward, then go
    kept.clear()
    loss = m(x)[0].sum()
    gc.collect()
    assert kept[0][1]() is not None
    loss.backward()
    gc.collect()
    assert kept[0][1]() is None


def _ptr(a):
    return a.__array_interface__["data"][0]


def test_cpu_hand_over_is_zero_copy(monkeypatch):
    """Count the host copies between torch and the engine: every array the engine receives or
    returns must share memory with the tensor on the other side."""
    seen = {}
    real_f, real_b = gpulstm.engine.forward, gpulstm.engine.backward

    def spy_f(ex, cell, params, x, h0, c0, lengths, *a, **k):
        out = real_f(ex, cell, params, x, h0, c0, lengths, *a, **k)
        seen["f"] = (params, x, h0, c0, out)
        return out

    def spy_b(ex, ctx, dy, dh_n=None, dc_n=None, *a, **k):
        out = real_b(ex, ctx, dy, dh_n, dc_n, *a, **k)
        seen["b"] = (dy, dh_n, dc_n, out)
        return out

    monkeypatch.setattr(gpulstm.engine, "forward", spy_f)
    monkeypatch.setattr(gpulstm.engine, "backward", spy_b)
    gen = torch.Generator().manual_seed(9)
    m, _ = make_pair("lstm", 3, 4, num_layers=2)
    x, h0, c0 = randn(5, 2, 3, gen=gen), randn(2, 2, 4, gen=gen), randn(2, 2, 4, gen=gen)
    y, (h, c) = m(x, (h0, c0))
    params, xa, h0a, c0a, (ya, ha, ca, _) = seen["f"]
    pairs = [(x, xa), (h0, h0a), (c0, c0a), (y, ya), (h, ha), (c, ca)]
    flat = [w[k] for dirs in params for w in dirs for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    pairs += list(zip(m.parameters(), flat))
    gy, gh, gc_ = (torch.randn(t.shape, generator=gen, dtype=F64) for t in (y, h, c))
    grads = torch.autograd.grad([y, h, c], [x, h0, c0, *m.parameters()], [gy, gh, gc_])
    dy, dh_n, dc_n, (dx, dh0, dc0, wgrads) = seen["b"]
    pairs += [(gy, dy), (gh, dh_n), (gc_, dc_n), (grads[0], dx), (grads[1], dh0), (grads[2], dc0)]
    flat_g = [w[k] for dirs in wgrads for w in dirs for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    pairs += list(zip(grads[3:], flat_g))
    copies = sum(t.data_ptr() != _ptr(a) for t, a in pairs)
    assert len(pairs) == 12 + 2 * len(flat) and copies == 0


def test_save_load_deepcopy_pickle(tmp_path):
    gen = torch.Generator().manual_seed(10)
    m, _ = make_pair("gru", 3, 4, num_layers=2, bidirectional=True, batch_first=True)
    x = randn(2, 5, 3, gen=gen, requires_grad=False)
    want = m(x)
    torch.save(m, tmp_path / "m.pt")
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    clones = [torch.load(tmp_path / "m.pt", weights_only=False), copy.deepcopy(m),
              pickle.loads(pickle.dumps(m))]
    fresh, _ = make_pair("gru", 3, 4, num_layers=2, bidirectional=True, batch_first=True, seed=3)
    fresh.load_state_dict(torch.load(tmp_path / "sd.pt"))
    for c in clones + [fresh]:
        assert type(c) is gt.GRU
        got = c(x)
        assert all(torch.equal(u, v) for u, v in zip(got, want))
    assert clones[1].weight_ih_l0.data_ptr() != m.weight_ih_l0.data_ptr()


def test_module_conveniences():
    m = gt.LSTM(3, 4, num_layers=2, proj_size=2, batch_first=True)
    assert repr(m) == repr(torch.nn.LSTM(3, 4, num_layers=2, proj_size=2, batch_first=True))
    assert repr(gt.RNN(3, 4, 1, "relu")).endswith("nonlinearity='relu')")
    assert m.weight_ih_l0.dtype == torch.get_default_dtype()
    assert [len(w) for w in m.all_weights] == [5, 5]
    m.flatten_parameters()
    m.double()
    assert m.weight_hr_l1.dtype == F64 and m(torch.randn(2, 3, 3, dtype=F64))[0].shape == (2, 3, 2)
    with pytest.warns(UserWarning, match="num_layers=1"):
        gt.GRU(3, 4, dropout=0.2)


def test_float32():
    ours, ref = make_pair("lstm", 3, 8, num_layers=2, dtype=torch.float32)
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(11))
    assert_all_close(flat_outputs(ours(x)), flat_outputs(ref(x)), 2e-5)


def test_explicit_backends():
    gen = torch.Generator().manual_seed(12)
    x = randn(4, 2, 3, gen=gen, requires_grad=False)
    base = gt.GRU(3, 4, dtype=F64)
    y0 = base(x)[0]
    m = gt.GRU(3, 4, dtype=F64, backend="emulated")
    m.load_state_dict(base.state_dict())
    assert_all_close([m(x)[0]], [y0], 1e-12)
    try:
        get_backend("cupy")
    except BackendUnavailable:
        with pytest.raises(BackendUnavailable):
            gt.LSTM(3, 4, backend="cupy")
    with pytest.raises(ValueError, match="unknown backend"):
        gt.LSTM(3, 4, backend="tpu")


def test_dlpack_path_with_a_stand_in_execution(monkeypatch):
    """The bridge's device-array branch (arrays back to tensors through DLPack, as for CuPy)
    run on the CPU, with an execution whose array module stands in for NumPy."""
    import types

    from gpulstm.backends import numpy_pointwise
    from gpulstm.backends.numpy import HostExecution

    class StandIn(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np, name)

    ex = HostExecution("stand-in", numpy_pointwise)
    ex.xp = StandIn("stand_in")
    ex.xp.from_dlpack = np.from_dlpack
    real = gt.get_backend
    monkeypatch.setattr(gt, "get_backend", lambda name, algo="auto": ex if name == "stand-in" else real(name, algo))
    gen = torch.Generator().manual_seed(13)
    ours, ref = make_pair("lstm", 3, 4, num_layers=2, bidirectional=True, proj_size=2,
                          batch_first=True)
    ours.backend = "stand-in"
    assert gt._Bridge(ex, torch.device("cpu")).host is False
    inputs, make_input = problem(ours, "packed_hx", gen)
    (o1, g1), (o2, g2) = run_both(ours, ref, inputs, make_input, gen)
    assert_all_close(o1, o2, 1e-12)
    assert_all_close(g1, g2, 1e-11)


def test_bad_arguments():
    m = gt.LSTM(3, 4, num_layers=2, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"input must have shape \(\*, \*, 3\); got \(5, 2, 4\)"):
        m(torch.randn(5, 2, 4, dtype=F64))
    with pytest.raises(TypeError, match="dtype float64"):
        m(x.float())
    with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\)"):
        m(x, (torch.zeros(1, 2, 4, dtype=F64), torch.zeros(2, 2, 4, dtype=F64)))
    with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 4\)"):
        m(x[:, 0], (torch.zeros(2, 4, dtype=F64), torch.zeros(2, 1, 4, dtype=F64)))
    with pytest.raises(TypeError, match="tuple"):
        m(x, torch.zeros(2, 2, 4, dtype=F64))
    with pytest.raises(TypeError, match="tensor h_0"):
        gt.GRU(3, 4)(x.float(), (torch.zeros(1, 2, 4),))
    with pytest.raises(ValueError, match="3-D"):
        m(torch.randn(3, dtype=F64))
    with pytest.raises(TypeError, match="float16"):
        gt.GRU(3, 4, dtype=torch.float16)(torch.randn(2, 1, 3, dtype=torch.float16))
    with pytest.raises(ValueError, match="proj_size"):
        gt.LSTM(3, 4, proj_size=4)
    with pytest.raises(TypeError, match="batch_first must be a bool"):
        gt.GRU(3, 4, batch_first=1)
    with pytest.raises(ValueError, match="nonlinearity"):
        gt.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="dropout"):
        gt.RNN(3, 4, dropout=-0.1)  # 1.0 is valid, as in torch.nn


def test_import_gpulstm_does_not_import_torch():
    code = "import sys, gpulstm; import gpulstm.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_torch_inside_is_the_real_torch():
    assert gt.torch is sys.modules["torch"] and "gpulstm" not in pathlib.Path(torch.__file__).parts
    # with gpulstm/ itself on sys.path, gpulstm/torch.py would shadow torch: it says so
    code = f"import sys; sys.path.insert(0, {str(ROOT / 'gpulstm')!r}); import torch"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "python -m gpulstm" in r.stderr


# -- GPU (CUDA tensors on the cupy backend) ---------------------------------------------------------
@pytest.fixture(scope="module")
def cuda():
    try:
        get_backend("cupy")
    except BackendUnavailable as e:
        pytest.skip(f"backend 'cupy' unavailable: {e}")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch.device("cuda", torch.cuda.current_device())


@pytest.mark.gpu
@pytest.mark.parametrize("cell,opts,kind", [
    ("lstm", dict(num_layers=2, bidirectional=True), "packed_hx"),
    ("lstm", dict(proj_size=2, batch_first=True), "hx"),
    ("gru", dict(num_layers=2), "unbatched"),
    ("rnn_tanh", dict(bidirectional=True), "packed"),
    ("rnn_relu", dict(), "hx"),
], ids=str)
def test_gpu_parity_and_gradcheck(cuda, cell, opts, kind):
    gen = torch.Generator().manual_seed(20)
    ours, ref = make_pair(cell, 3, 4, device=cuda, **opts)
    inputs, make_input = problem(ours, kind, gen, device=cuda)
    (o1, g1), (o2, g2) = run_both(ours, ref, inputs, make_input, gen)
    assert all(t.device == cuda for t in o1 + list(g1))
    assert_all_close(o1, o2, 1e-12)
    assert_all_close(g1, g2, 1e-11)
    small, _ = make_pair(cell, 2, 3, device=cuda, **opts)
    inputs, make_input = problem(small, kind, gen, T=3, B=2, device=cuda)
    assert _gradcheck(small, inputs, make_input)


@pytest.mark.gpu
def test_gpu_zero_copy_and_torch_stream(cuda, monkeypatch):
    import cupy as cp
    seen = {}
    real = gpulstm.engine.forward

    def spy(ex, cell, params, x, h0, c0, *a, **k):
        seen["stream"] = cp.cuda.get_current_stream().ptr
        seen["device"] = cp.cuda.runtime.getDevice()
        out = real(ex, cell, params, x, h0, c0, *a, **k)
        seen["arrays"] = (x, h0, params[0][0]["w_ih"], out[0], out[1])
        return out

    monkeypatch.setattr(gpulstm.engine, "forward", spy)
    m, ref = make_pair("lstm", 3, 4, device=cuda)
    gen = torch.Generator().manual_seed(21)
    x, h0, c0 = (randn(*s, gen=gen, device=cuda) for s in [(5, 2, 3), (1, 2, 4), (1, 2, 4)])
    s = torch.cuda.Stream(cuda)
    s.wait_stream(torch.cuda.current_stream(cuda))  # the inputs were written on the default stream
    with torch.cuda.stream(s):
        y, (h, c) = m(x, (h0, c0))
        y.sum().backward()
    torch.cuda.synchronize()
    assert seen["stream"] == s.cuda_stream and seen["device"] == cuda.index
    xa, h0a, wa, ya, ha = seen["arrays"]
    pairs = [(x, xa), (h0, h0a), (m.weight_ih_l0, wa), (y, ya), (h, ha)]
    assert sum(t.data_ptr() != a.data.ptr for t, a in pairs) == 0
    y_ref = ref(x, (h0, c0))[0]
    assert_all_close([y.detach()], [y_ref.detach()], 1e-12)


@pytest.mark.gpu
def test_gpu_training_loop_matches_cudnn(cuda):
    gen = torch.Generator().manual_seed(22)
    ours, ref = make_pair("lstm", 5, 8, device=cuda, num_layers=2)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, ref)]
    for step in range(20):
        x = torch.randn(7, 4, 5, generator=gen, dtype=F64).to(cuda)
        for m, opt in zip((ours, ref), opts):
            opt.zero_grad()
            m(x)[0].pow(2).mean().backward()
            opt.step()
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert (p - q).abs().max().item() < 1e-10
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())


def test_cpu_tensors_run_on_the_compiled_cpu_backend_by_default():
    """backend=None picks the fastest execution for the tensor's device, as backend="auto"
    does elsewhere (cpu where its library builds); an explicit backend= still wins."""
    from gpulstm.backends import BackendUnavailable, get_backend
    try:
        get_backend("cpu")
        want = "cpu"
    except BackendUnavailable:
        want = "numpy"
    m = gt.LSTM(3, 4)
    assert m._execution(torch.device("cpu")).name == want
    assert gt.LSTM(3, 4, backend="numpy")._execution(torch.device("cpu")).name == "numpy"
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    ref = torch.nn.LSTM(3, 4).double()
    m = m.double()
    m.load_state_dict(ref.state_dict())
    y, _ = m(x)
    assert torch.allclose(y, ref(x)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN", "CIFG"])
def test_torch_face_takes_algo_as_the_numpy_face(cls, monkeypatch):
    """algo= on gpulstm.torch as on gpulstm.LSTM: on the emulated kernels each algorithm runs
    its own kernels (recorded) and gives the stepwise loop's outputs and gradients (float64);
    an unknown one is refused up front, and a choice a backend does not have is refused with
    the reason."""
    backend_or_skip("emulated")
    ran = []
    for hook in ("_fused", "_persistent"):
        orig = getattr(KernelLoop, hook)
        monkeypatch.setattr(KernelLoop, hook, lambda self, cell, kernel, *a, _o=orig: (
            ran.append(kernel), _o(self, cell, kernel, *a))[1])
    rng = np.random.default_rng()
    x = torch.tensor(rng.standard_normal((6, 3, 4)))
    gy = torch.tensor(rng.standard_normal((6, 3, 10)))
    ref = None
    for algo in ("stepwise", "fused", "persistent", "auto"):
        torch.manual_seed(7)
        m = getattr(gt, cls)(4, 5, bidirectional=True, dtype=torch.float64, backend="emulated",
                             algo=algo)
        xi = x.clone().requires_grad_(True)
        ran.clear()
        y = m(xi)[0]
        (y * gy).sum().backward()
        loops = {n.split("_")[0] for n in ran}  # fused_forward -> fused
        assert loops == {"stepwise": set(), "fused": {"fused"}}.get(algo, {"persistent"})
        got = [y.detach(), xi.grad] + [p.grad for p in m.parameters()]
        if ref is None:
            ref = got
            assert repr(m).endswith("algo='stepwise')")
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="unknown algo"):
        getattr(gt, cls)(4, 5, algo="fastest")
    with pytest.raises(ValueError, match="algo='fused' needs a backend"):
        getattr(gt, cls)(4, 5, backend="numpy", algo="fused")


@pytest.mark.parametrize("opts", [dict(forget_gate=False), dict(peephole=True),
                                  dict(peephole=True, forget_gate=False, proj_size=3)])
def test_torch_face_lstm_variants_as_numpy_face(opts):
    """gpulstm.torch.LSTM's variants (forget_gate=False: the 1997 cell, f = 1; peephole=True:
    parameters weight_peep_l{k} (3, H)) give the numpy face's numbers and gradients, and the
    two faces' state dicts have the same keys and shapes."""
    rng = np.random.default_rng()
    tm = gt.LSTM(4, 5, num_layers=2, dtype=torch.float64, **opts)
    for k, v in opts.items():
        assert f"{k}={v!r}" in repr(tm)
    m = gl.LSTM(4, 5, num_layers=2, backend="numpy", dtype="float64", **opts)
    assert {k: tuple(v.shape) for k, v in tm.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in m.state_dict().items()}
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((6, 3, 4))
    gy = rng.standard_normal((6, 3, opts.get("proj_size", 5)))
    tx = torch.tensor(x, requires_grad=True)
    ty, _ = tm(tx)
    (ty * torch.tensor(gy)).sum().backward()
    y, _ = m(x)
    dx = m.backward(gy)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-13)
    for k, p in tm.named_parameters():
        np.testing.assert_allclose(m.grads[k], p.grad.numpy(), rtol=1e-12, atol=1e-13, err_msg=k)
    plain = gt.LSTM(4, 5, num_layers=2, dtype=torch.float64, proj_size=opts.get("proj_size", 0))
    plain.load_state_dict({k: v for k, v in tm.state_dict().items() if "peep" not in k})
    assert not torch.allclose(plain(tx)[0], ty)  # the options change the numbers

"""torch.compile: gpulstm.torch's layers and step cells trace as the registered operators
gpulstm::forward / gpulstm::backward (fake kernels, registered autograd), so fullgraph=True
compiles with zero graph breaks; compiled outputs and every gradient equal torch.nn's in
float64; the saved engine contexts are freed with the autograd graph. The default suite uses
the aot_eager backend (no C++ compile); the inductor backend is a slow test."""
import gc

import pytest
import torch

import gpulstm.torch as gt

F64 = torch.float64
LAYERS = {"lstm": (gt.LSTM, torch.nn.LSTM, {}), "gru": (gt.GRU, torch.nn.GRU, {}),
          "rnn_relu": (gt.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
          "cifg_free_lstm_proj": (gt.LSTM, torch.nn.LSTM, {"proj_size": 3})}


def layer_pair(kind, seed, **kw):
    ours, ref, opts = LAYERS[kind]
    torch.manual_seed(seed)
    a = ours(4, 5, dtype=F64, **opts, **kw)
    torch.manual_seed(seed)
    return a, ref(4, 5, dtype=F64, **opts, **kw)


def loss_of(m, x, hx):
    y, h = m(x, hx)
    hs = h if isinstance(h, tuple) else (h,)
    w = torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)
    return (y * w).sum() + sum(s.pow(2).sum() for s in hs)


def grads_of(fn, m, x, hx):
    leaves = [x] + list(hx if isinstance(hx, tuple) else (hx,))
    loss = fn(m, x, hx)
    return [loss.detach()] + list(torch.autograd.grad(loss, leaves + list(m.parameters())))


def fresh(kind, m, gen, T=6, B=3):
    L, D = m.num_layers, 2 if m.bidirectional else 1
    Hs = m.proj_size or m.hidden_size
    x = torch.randn(T, B, 4, generator=gen, dtype=F64, requires_grad=True)
    h = torch.randn(L * D, B, Hs, generator=gen, dtype=F64, requires_grad=True)
    if isinstance(m, gt.LSTM):
        return x, (h, torch.randn(L * D, B, 5, generator=gen, dtype=F64, requires_grad=True))
    return x, h


@pytest.mark.parametrize("opts", [dict(), dict(num_layers=2, bidirectional=True, batch_first=False)],
                         ids=["1layer", "2layers_bidir"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_compiled_layer_has_no_graph_break_and_matches_torch(kind, opts):
    ours, ref = layer_pair(kind, 3, **opts)
    gen = torch.Generator().manual_seed(17)
    x, hx = fresh(kind, ours, gen)
    explain = torch._dynamo.explain(loss_of)(ours, x, hx)
    assert explain.graph_break_count == 0 and explain.graph_count == 1, explain.break_reasons
    compiled = torch.compile(loss_of, fullgraph=True, backend="aot_eager")
    for _ in range(2):  # a second call with fresh inputs reuses the graph
        x, hx = fresh(kind, ours, gen)
        got = grads_of(compiled, ours, x, hx)
        want = grads_of(loss_of, ref, x, hx)
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want)):
            assert (a - b).abs().max() <= 1e-12 * (1 + b.abs().max()), i
    assert not gt._SAVED  # every saved context went with its graph


def test_compiled_module_training_step_with_dropout_and_cells():
    """A whole model (embedding, 2-layer LSTM with dropout, decoder) and a step-cell loop
    compile with fullgraph=True; the compiled model's step equals the eager one's (dropout
    masks from torch's generator, the same seed)."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6, dtype=F64)
            self.rnn = gt.LSTM(6, 6, 2, dropout=0.3, dtype=F64)
            self.cell = gt.GRUCell(6, 6, dtype=F64)
            self.dec = torch.nn.Linear(6, 10, dtype=F64)

        def forward(self, tokens):
            y, _ = self.rnn(self.emb(tokens))
            h = None
            for t in range(y.shape[0]):
                h = self.cell(y[t], h)
            return self.dec(h)

    torch.manual_seed(0)
    m = Net()
    tokens = torch.randint(0, 10, (5, 3))
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    res = []
    for f in (m, compiled):
        torch.manual_seed(42)
        out = f(tokens)
        res.append([out.detach()] + list(torch.autograd.grad(out.pow(2).sum(), list(m.parameters()))))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch._dynamo.explain(m)(tokens).graph_break_count == 0
    with torch.no_grad():  # inference: nothing saved
        outs = [torch.manual_seed(7) and f(tokens) for f in (compiled, m)]
    torch.testing.assert_close(*outs, rtol=0, atol=1e-12)
    gc.collect()
    assert not gt._SAVED


def test_compiled_forward_without_backward_frees_its_saved_context():
    m = gt.GRU(4, 5, dtype=F64)
    f = torch.compile(lambda x: m(x)[0].sum(), fullgraph=True, backend="aot_eager")
    loss = f(torch.randn(3, 2, 4, dtype=F64))
    assert len(gt._SAVED) == 1
    del loss
    gc.collect()
    assert not gt._SAVED


def test_compiled_double_backward_raises():
    """create_graph=True through a compiled gpulstm layer raises (torch's aot_autograd refuses
    it), never a silent wrong gradient."""
    m = gt.LSTM(3, 4, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64, requires_grad=True)
    f = torch.compile(lambda x: m(x)[0].pow(2).sum(), fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="double backward"):
        (g,) = torch.autograd.grad(f(x), x, create_graph=True)
        g.sum().backward()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_inductor_compiled_layer_matches_torch(kind):
    """The default inductor backend (C++ code generation for the rest of the graph)."""
    ours, ref = layer_pair(kind, 5, num_layers=2)
    gen = torch.Generator().manual_seed(8)
    compiled = torch.compile(loss_of, fullgraph=True)
    x, hx = fresh(kind, ours, gen)
    for a, b in zip(grads_of(compiled, ours, x, hx), grads_of(loss_of, ref, x, hx)):
        assert (a - b).abs().max() <= 1e-12 * (1 + b.abs().max())


@pytest.mark.parametrize("kind", ["lstm", "rnn_tanh"])
def test_compiled_step_cell_loop_matches_torch(kind):
    """A loop of step cells (LSTMCell with its (h, c) state, RNNCell) compiles with
    fullgraph=True; outputs and every gradient equal torch.nn's cells'."""
    ours_cls, ref_cls = (gt.LSTMCell, torch.nn.LSTMCell) if kind == "lstm" else (gt.RNNCell, torch.nn.RNNCell)
    torch.manual_seed(4)
    ours = ours_cls(3, 5, dtype=F64)
    torch.manual_seed(4)
    ref = ref_cls(3, 5, dtype=F64)

    def unroll(cell, xs):
        state, total = None, 0
        for t in range(xs.shape[0]):
            state = cell(xs[t], state)
            total = total + sum(s.pow(2).sum() for s in (state if isinstance(state, tuple) else (state,)))
        return total

    gen = torch.Generator().manual_seed(12)
    xs = torch.randn(4, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    assert torch._dynamo.explain(unroll)(ours, xs).graph_break_count == 0
    compiled = torch.compile(unroll, fullgraph=True, backend="aot_eager")
    got = compiled(ours, xs)
    want = unroll(ref, xs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, [xs, *ours.parameters()]),
                    torch.autograd.grad(want, [xs, *ref.parameters()])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)

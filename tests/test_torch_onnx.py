"""ONNX export: torch.onnx.export of a model holding gpulstm.torch layers gives ONNX's own
LSTM / GRU / RNN operators (the layer is exported as torch's RNN operator with the same
weights; the exporter reorders the gates to ONNX's order), and onnxruntime's outputs equal
the torch model's, for LSTM, GRU and both RNNs, multi-layer, bidirectional, batch_first, with
both exporters (torch.export-based, the default, and the TorchScript one). Skips with the
reason where onnx/onnxruntime (the ``onnx`` extra, part of ``test``) are not installed."""
import warnings

import numpy as np
import pytest
import torch

import gpulstm.torch as gt

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'gpulstm[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'gpulstm[onnx]')")

CELLS = {"lstm": (gt.LSTM, {}, "LSTM"), "gru": (gt.GRU, {}, "GRU"),
         "rnn_tanh": (gt.RNN, {"nonlinearity": "tanh"}, "RNN"),
         "rnn_relu": (gt.RNN, {"nonlinearity": "relu"}, "RNN")}


class Model(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.head = torch.nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x, hx):
        y, h = self.rnn(x, hx)
        return (self.head(y), *(h if isinstance(h, tuple) else (h,)))


def export_run(m, x, states, hx, path, dynamo):
    """torch.onnx.export of ``m`` on (x, hx) to ``path``, then onnxruntime on x and the state
    tensors: (the graph's operator types, onnxruntime's outputs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x, hx), str(path), dynamo=dynamo)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return ops, sess.run(None, dict(zip(names, [t.numpy() for t in (x, *states)])))


def export_and_run(cell, tmp_path, dynamo, seed, **opts):
    cls, kw, onnx_op = CELLS[cell]
    torch.manual_seed(seed)
    m = Model(cls(3, 4, **kw, **opts)).eval()
    rnn = m.rnn
    B, T, LD = 2, 5, rnn.num_layers * (2 if rnn.bidirectional else 1)
    x = torch.randn((B, T, 3) if rnn.batch_first else (T, B, 3))
    states = [torch.randn(LD, B, 4) for _ in range(2 if cell == "lstm" else 1)]
    hx = tuple(states) if cell == "lstm" else states[0]
    ops, got = export_run(m, x, states, hx, tmp_path / f"{cell}.onnx", dynamo)
    with torch.no_grad():
        want = m(x, hx)
    return ops, onnx_op, got, want


def check(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_export_gives_onnx_rnn_operators_matching_torch(cell, dynamo, tmp_path):
    ops, onnx_op, got, want = export_and_run(cell, tmp_path, dynamo, 1, num_layers=2,
                                             bidirectional=True)
    if cell.startswith("rnn") and dynamo:
        # the torch.export-based exporter writes torch's Elman RNN as unrolled steps (for
        # torch.nn.RNN too: the same operators), the TorchScript one as ONNX's RNN
        ref = torch.nn.RNN(3, 4, num_layers=2, bidirectional=True, nonlinearity=cell[4:]).eval()
        path = tmp_path / "ref.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Model(ref), (torch.randn(5, 2, 3), torch.randn(4, 2, 4)), str(path))
        assert ops == {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "MatMul" in ops and cell[4:].capitalize() in ops, ops
    else:
        assert onnx_op in ops, ops
    assert not any(op.startswith("gpulstm") for op in ops)
    check(got, want)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_export_batch_first_one_layer(cell, tmp_path):
    ops, onnx_op, got, want = export_and_run(cell, tmp_path, True, 2, batch_first=True)
    assert onnx_op in ops
    check(got, want)


def test_export_refuses_what_onnx_cannot_express(tmp_path):
    for m in (gt.LSTM(3, 4, peephole=True), gt.LSTM(3, 4, proj_size=2), gt.CIFG(3, 4)):
        with pytest.raises(Exception) as info:
            torch.onnx.export(m.eval(), (torch.randn(5, 2, 3),), str(tmp_path / "m.onnx"), dynamo=False)
        assert "ONNX export supports LSTM, GRU and RNN" in str(info.value)


STEP_CELLS = {"lstm": (gt.LSTMCell, {}), "gru": (gt.GRUCell, {}),
              "rnn_tanh": (gt.RNNCell, {"nonlinearity": "tanh"}),
              "rnn_relu": (gt.RNNCell, {"nonlinearity": "relu"})}


class StepModel(torch.nn.Module):
    """Three steps of a step cell (with and without the bias), the way a hand-written loop
    uses one."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, xs, h):
        for t in range(xs.shape[0]):
            h = self.cell(xs[t], h)
        return h if isinstance(h, tuple) else (h,)


@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", list(STEP_CELLS))
def test_step_cells_export_and_match_torch(cell, bias, dynamo, tmp_path):
    """gt.LSTMCell/GRUCell/RNNCell export as torch.nn's cells do (torch's own step operators,
    no gpulstm operator in the graph), and onnxruntime's outputs equal the module's."""
    cls, kw = STEP_CELLS[cell]
    torch.manual_seed(3)
    m = StepModel(cls(3, 4, bias=bias, **kw)).eval()
    xs = torch.randn(3, 2, 3)
    states = [torch.randn(2, 4) for _ in range(2 if cell == "lstm" else 1)]
    hx = tuple(states) if cell == "lstm" else states[0]
    ops, got = export_run(m, xs, states, hx, tmp_path / f"{cell}.onnx", dynamo)
    assert not any(op.startswith("gpulstm") for op in ops), ops
    with torch.no_grad():
        want = m(xs, hx)
        # and the eager module (gpulstm's engine) agrees with torch.nn's cell on these weights
        ref = getattr(torch.nn, cls.__name__)(3, 4, bias=bias, **kw)
        ref.load_state_dict(m.cell.state_dict())
        want_ref = StepModel(ref)(xs, hx)
    check(got, want)
    check([w.numpy() for w in want_ref], want)

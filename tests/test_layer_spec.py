"""One core under both faces (gpulstm.layer): the parameters, options, checks and messages of
``gpulstm.LSTM & co.`` and ``gpulstm.torch``'s modules come from one LayerSpec and one
functional forward/backward, whose reserve the torch face saves without knowing what it is."""
import inspect
import pathlib
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpulstm  # noqa: E402
import gpulstm.torch as gt  # noqa: E402
from gpulstm import cells, layer  # noqa: E402
from gpulstm.layer import LayerSpec  # noqa: E402

PKG = pathlib.Path(gpulstm.__file__).parent

LAYERS = [
    ("LSTM", {}),
    ("LSTM", {"num_layers": 2, "bidirectional": True, "proj_size": 3}),
    ("LSTM", {"peephole": True, "bias": False}),
    ("LSTM", {"forget_gate": False, "num_layers": 2}),
    ("GRU", {"bidirectional": True}),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2}),
    ("CIFG", {"bidirectional": True}),
    ("IndRNN", {"num_layers": 2, "bias": False}),
]
CELLS = [("LSTMCell", {}), ("GRUCell", {"bias": False}), ("RNNCell", {"nonlinearity": "relu"})]


def _names_shapes(sd):
    return [(k, tuple(v.shape)) for k, v in sd.items()]


@pytest.mark.parametrize("name,kw", LAYERS + CELLS, ids=lambda v: str(v))
def test_both_faces_register_the_spec_parameters_in_torch_order(name, kw):
    a = getattr(gpulstm, name)(5, 6, backend="numpy", **kw)
    b = getattr(gt, name)(5, 6, **kw)
    want = [(p.name, p.shape) for p in a._spec.params]
    assert _names_shapes(a.state_dict()) == want
    assert _names_shapes(b.state_dict()) == want
    assert [n for n, _ in b.named_parameters()] == [n for n, _ in want]


@pytest.mark.parametrize("name,kw", LAYERS[:4] + LAYERS[4:5])
def test_torch_nn_has_the_same_names_in_the_same_order(name, kw):
    kw = {k: v for k, v in kw.items() if k not in ("peephole", "forget_gate")}
    ref = getattr(torch.nn, name)(5, 6, **kw)
    assert _names_shapes(getattr(gt, name)(5, 6, **kw).state_dict()) == _names_shapes(ref.state_dict())


#: options of the NumPy face that the torch face takes from torch itself
TORCH_OWN = {"seed": "torch.manual_seed", "allow_tf32": "torch.backends.cuda.matmul.allow_tf32"}


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "CIFG", "IndRNN", "LSTMCell", "GRUCell",
                                  "RNNCell"])
def test_every_option_of_one_face_is_on_the_other(name):
    np_opts = set(inspect.signature(getattr(gpulstm, name).__init__).parameters) - {"self", "kwargs", "args"}
    # the NumPy face's classes pass keywords through **kwargs to the base: collect those too
    for klass in getattr(gpulstm, name).__mro__:
        if klass.__module__ == "gpulstm.modules" and "__init__" in vars(klass):
            np_opts |= set(inspect.signature(klass.__init__).parameters) - {"self", "kwargs", "args"}
    if name.endswith("Cell"):  # the step cells: one layer, one direction, no dropout
        np_opts -= {"num_layers", "batch_first", "dropout", "bidirectional", "proj_size", "algo",
                    "cuda_graphs", "recompute"}
    if name not in ("LSTM",):
        np_opts -= {"proj_size"}  # refused by the spec on both faces
    if name != "GRU":
        np_opts -= {"update_bias"}  # inherited by RNN/IndRNN from GRU and refused there
    t_opts = set(inspect.signature(getattr(gt, name).__init__).parameters) - {"self"}
    missing = np_opts - t_opts - set(TORCH_OWN) - {"dtype"}
    assert not missing, f"gpulstm.torch.{name} lacks {sorted(missing)}"


def test_torch_face_rnn_identity_init_matches_the_numpy_face():
    a = gpulstm.RNN(3, 5, 2, "relu", init="identity", backend="numpy")
    b = gt.RNN(3, 5, 2, "relu", init="identity")
    for k in ("weight_hh_l0", "weight_hh_l1"):
        assert np.array_equal(a.state_dict()[k], np.eye(5)) and torch.equal(b.state_dict()[k], torch.eye(5))
    for k in ("bias_ih_l0", "bias_hh_l1"):
        assert not a.state_dict()[k].any() and not b.state_dict()[k].any()
    b.reset_parameters()  # re-applied, as the bias options are
    assert torch.equal(b.weight_hh_l1, torch.eye(5))
    with pytest.raises(ValueError, match="init must be 'default' or 'identity'"):
        gt.RNN(3, 5, init="chrono")


def _message(fn):
    with pytest.raises((ValueError, TypeError)) as e:
        fn()
    return e.type, str(e.value)


BAD_BUILDS = [
    ("proj_size on GRU", {"proj_size": 2}, "GRU"),
    ("proj_size too big", {"proj_size": 6}, "LSTM"),
    ("dropout > 1", {"dropout": 1.5}, "LSTM"),
    ("num_layers 0", {"num_layers": 0}, "GRU"),
    ("bias not bool", {"bias": 1}, "RNN"),
    ("bidirectional not bool", {"bidirectional": "yes"}, "CIFG"),
]


@pytest.mark.parametrize("what,kw,name", BAD_BUILDS, ids=[b[0] for b in BAD_BUILDS])
def test_both_faces_refuse_a_bad_build_with_the_same_message(what, kw, name):
    a = _message(lambda: getattr(gpulstm, name)(4, 6, backend="numpy", **kw))
    b = _message(lambda: getattr(gt, name)(4, 6, **kw))
    assert a == b


BAD_CALLS = [
    ("feature size", (5, 2, 3), None),
    ("4-D input", (5, 2, 4, 1), None),
    ("1-D input", (5,), None),
    ("no time step", (0, 2, 4), None),
    ("batched state", (5, 2, 4), (1, 3, 6)),
    ("unbatched state", (5, 4), (1, 2, 6)),
]


@pytest.mark.parametrize("what,xs,hs", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_both_faces_refuse_a_bad_call_with_the_same_message(what, xs, hs):
    rng = np.random.default_rng()
    a_m = gpulstm.GRU(4, 6, backend="numpy", dtype="float64")
    b_m = gt.GRU(4, 6).double()
    x = rng.standard_normal(xs)
    h = None if hs is None else rng.standard_normal(hs)
    a = _message(lambda: a_m(x, h))
    b = _message(lambda: b_m(torch.from_numpy(x), None if h is None else torch.from_numpy(h)))
    # the same check and text; only the argument's name is each face's own
    assert a[0] == b[0]
    assert a[1].replace("x ", "input ", 1).replace("h0", "h_0") == b[1]


def test_the_dropout_warning_is_the_same_and_points_at_the_callers_line():
    for make in (lambda: gpulstm.LSTM(3, 4, dropout=0.5, backend="numpy"),
                 lambda: gt.LSTM(3, 4, dropout=0.5)):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            make()
        assert len(w) == 1 and "non-zero dropout expects num_layers greater than 1" in str(w[0].message)
        assert w[0].filename == __file__


@pytest.mark.parametrize("name,kw", LAYERS + CELLS, ids=lambda v: str(v))
def test_the_spec_key_rebuilds_an_equal_spec(name, kw):
    spec = getattr(gt, name)(5, 6, **kw)._spec
    again = LayerSpec.from_key(spec.key())
    assert again.params == spec.params and type(again.cell) is type(spec.cell)
    assert again.cell.config() == spec.cell.config() and again.key() == spec.key()


def test_the_reserve_packs_and_unpacks_to_the_same_gradients(rng):
    """What the torch face does with save_for_backward: pack the reserve to (token, arrays),
    rebuild it from copies of the arrays and the weights: the backward is bit for bit the
    direct one's."""
    from gpulstm.backends import get_backend
    ex = get_backend("numpy")
    spec = LayerSpec(cells.LSTMCell(peephole=True), 3, 5, 2, True, True, 0, owner="LSTM")
    ws = [rng.standard_normal(p.shape) for p in spec.params]
    x = rng.standard_normal((6, 2, 3))
    lens = np.array([6, 4], np.int32)
    y, h_n, c_n, res = layer.forward(ex, spec, ws, x, None, None, lens, dropout=0.3,
                                     rng=gpulstm.engine.DropoutStream(7))
    dy = rng.standard_normal(y.shape)
    token, arrays = res.pack(np)
    assert arrays and all(isinstance(a, np.ndarray) for a in arrays)
    again = layer.Reserve.unpack(token, [a.copy() for a in arrays], [w.copy() for w in ws])
    got = layer.backward(ex, again, dy)
    want = layer.backward(ex, res, dy)
    for g, w in zip(got[:3] + tuple(got[3]), want[:3] + tuple(want[3])):
        assert np.array_equal(g, w)


def test_the_faces_reach_the_engine_only_through_the_layer_core():
    """Both faces make one call into gpulstm.layer; neither imports the engine or walks its
    saved context."""
    for face in ("modules.py", "torch.py"):
        src = (PKG / face).read_text()
        for banned in ("engine.forward(", "engine.backward(", "engine.Context", ".saved[",
                       "saved_bytes(", "weight_shapes("):
            assert banned not in src, f"{face} uses {banned}"


def test_the_recurrent_layer_is_specified_once():
    """Parameter names, shapes and call checks live in gpulstm/layer.py alone."""
    for face in ("modules.py", "torch.py"):
        src = (PKG / face).read_text()
        assert '"weight_ih"' not in src and "_l{layer}" not in src, face
        assert "must have at least one time step" not in src, face


@pytest.mark.parametrize("cls,kw", [("LSTM", {"num_layers": 2}), ("GRU", {"bidirectional": True})])
def test_torch_face_cuda_graphs_replay_and_equal_the_fused_loop(cls, kw, rng):
    """cuda_graphs=True on the torch face (emulated: the CUDA kernels on the CPU): the first
    call captures, later calls replay, and every number equals the plain fused loop's."""
    torch.manual_seed(0)
    plain = getattr(gt, cls)(3, 5, backend="emulated", algo="fused", **kw).double()
    torch.manual_seed(0)
    graphed = getattr(gt, cls)(3, 5, backend="emulated", algo="fused", cuda_graphs=True, **kw).double()
    for _ in range(3):
        x = torch.from_numpy(rng.standard_normal((4, 2, 3)))
        outs = []
        for m in (plain, graphed):
            xi = x.clone().requires_grad_()
            y = m(xi)[0]
            (y * torch.from_numpy(np.arange(y.numel(), dtype=np.float64).reshape(y.shape))).sum().backward()
            outs.append([y.detach(), xi.grad] + [p.grad.clone() for p in m.parameters()])
            m.zero_grad()
        for a, b in zip(*outs):
            assert torch.equal(a, b)
    (ex,) = gt._GRAPHED[graphed].values()
    st = ex.graph_pool.stats()
    assert st["captures"]["forward"] >= 1 and st["replays"]["forward"] >= 2
    assert "cuda_graphs=True" in repr(graphed)


def test_torch_face_cuda_graphs_refused_without_cuda_kernels():
    with pytest.raises(ValueError, match="cuda_graphs=True needs a backend"):
        gt.LSTM(3, 4, backend="numpy", cuda_graphs=True)

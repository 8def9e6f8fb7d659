"""Conformance with torch.nn.LSTM/GRU/RNN, ported from PyTorch's own RNN tests (test/test_nn.py:
test_rnn_args_check, test_projections_lstm_args_check, test_RNN_input_size_zero,
test_RNN_dropout, test_RNN_change_dropout, test_variable_sequence, test_rnn_retain_variables;
torch/testing/_internal/common_modules.py: the no-batch-dim module inputs), with torch as the
oracle, plus the state and misuse cases of the library's contract.

Intended differences from torch (listed in README.md, "Differences from torch.nn"), each
asserted where it shows:
- bad shapes raise ValueError/TypeError where torch raises RuntimeError;
- ``backward`` can be called again on the same forward (as with ``retain_graph=True``): the
  saved forward stays until the next forward;
- changing ``x`` or the parameters in place between forward and backward does not change the
  gradients (the forward keeps private copies) where torch raises;
- a module unpickled or deep-copied has no saved forward (call forward again before backward).
"""
from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpulstm as gl
from gpulstm.backends import BackendUnavailable

from torch_ref import make_pair, ours_run, random_problem, torch_run, assert_close

BACKENDS = [name for name, why in gl.available_backends().items() if why is None]
CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
MODULES = [(gl.LSTM, torch.nn.LSTM), (gl.GRU, torch.nn.GRU), (gl.RNN, torch.nn.RNN)]


def t2n(state_dict):
    return {k: v.detach().numpy() for k, v in state_dict.items()}


def torch_grads(ref):
    return {k: (np.zeros(tuple(p.shape)) if p.grad is None else p.grad.numpy())
            for k, p in ref.named_parameters()}


# -- constructor: torch's positional order and argument checks -------------------------------
def test_rnn_positional_arguments_in_torchs_order(rng):
    args = (2, 3, 2, "relu", False, True, 0.0, True)  # I, H, L, nonlinearity, bias, bf, p, bidir
    ours, ref = gl.RNN(*args, backend="numpy", dtype="float64"), torch.nn.RNN(*args).double()
    assert (ours.nonlinearity, ours.bias, ours.batch_first, ours.bidirectional) == \
        (ref.nonlinearity, ref.bias, ref.batch_first, ref.bidirectional)
    ours.load_state_dict(t2n(ref.state_dict()))
    x = rng.standard_normal((4, 5, 2))  # batch_first: (B, T, I)
    np.testing.assert_allclose(ours(x)[0], ref(torch.tensor(x))[0].detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("cls,tcls", MODULES[:2])
def test_gru_lstm_positional_arguments_in_torchs_order(cls, tcls):
    args = (2, 3, 2, False, True, 0.25, True)  # I, H, L, bias, batch_first, dropout, bidir
    ours, ref = cls(*args, backend="numpy"), tcls(*args)
    for a in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout",
              "bidirectional"):
        assert getattr(ours, a) == getattr(ref, a), a
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_lstm_proj_size_is_the_eighth_positional_argument():
    ours, ref = gl.LSTM(2, 5, 1, True, False, 0.0, False, 3, backend="numpy"), \
        torch.nn.LSTM(2, 5, 1, True, False, 0.0, False, 3)
    assert ours.proj_size == ref.proj_size == 3
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("kwargs", [dict(dropout=1.5), dict(dropout=-0.1), dict(dropout=True),
                                    dict(hidden_size=0), dict(num_layers=0)])
def test_constructor_refusals_match_torch(kwargs):
    """torch raises ValueError for these too (dropout out of [0, 1], sizes < 1)."""
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(ValueError):
        torch.nn.LSTM(**args)
    with pytest.raises((ValueError, TypeError)):
        gl.LSTM(backend="numpy", **args)


def test_dtype_none_is_torchs_default_float32():
    assert gl.LSTM(2, 3, backend="numpy", dtype=None).dtype == np.float32
    assert torch.nn.LSTM(2, 3, dtype=None).weight_ih_l0.dtype == torch.float32


# -- test_rnn_args_check / test_projections_lstm_args_check -----------------------------------
def _bad_calls(proj):
    """(name, T, B, I, L*D, H for h0, H for c0) variations of torch's args checks."""
    I, H, L, B, T = 3, 5, 2, 6, 4
    Hh = proj or H
    good = dict(T=T, B=B, I=I, LDh=L, Hh=Hh, LDc=L, Hc=H)
    yield "input_size", {**good, "I": I + 1}
    yield "hidden batch", {**good, "B": B}, dict(hB=B + 1)
    yield "hidden layers", {**good, "LDh": L + 1}
    yield "hidden size", {**good, "Hh": Hh + 1}
    yield "cell layers", {**good, "LDc": L + 1}
    yield "cell size", {**good, "Hc": H + 1}


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN", "LSTM-proj"])
def test_rnn_args_check(mode):
    """Every wrong input or state shape that torch refuses, gpulstm refuses (ValueError where
    torch raises RuntimeError), naming the argument."""
    I, H, L = 3, 5, 2
    proj = 3 if mode == "LSTM-proj" else 0
    name = mode.split("-")[0]
    tcls, cls = getattr(torch.nn, name), getattr(gl, name)
    kw = dict(proj_size=proj) if proj else {}
    ref, ours = tcls(I, H, L, **kw), cls(I, H, L, backend="numpy", **kw)
    for case in _bad_calls(proj):
        what, s = case[0], case[1]
        hB = case[2]["hB"] if len(case) > 2 else s["B"]
        if name != "LSTM" and what.startswith("cell"):
            continue
        x = np.random.default_rng(0).standard_normal((s["T"], s["B"], s["I"])).astype(np.float32)
        h = np.zeros((s["LDh"], hB, s["Hh"]), np.float32)
        c = np.zeros((s["LDc"], hB, s["Hc"]), np.float32)
        thx = (torch.tensor(h), torch.tensor(c)) if name == "LSTM" else torch.tensor(h)
        with pytest.raises(RuntimeError):
            ref(torch.tensor(x), thx)
        with pytest.raises(ValueError, match="x must have shape" if what == "input_size"
                           else "c0 must have shape" if what.startswith("cell") else "h0 must have shape"):
            ours(x, (h, c) if name == "LSTM" else h)


def test_lstm_hx_of_one_array_says_how_many():
    m = gl.LSTM(2, 3, backend="numpy")
    h0 = np.zeros((1, 4, 3), np.float32)
    with pytest.raises(TypeError, match=r"expected a tuple of 2 arrays \(h0, c0\), got 1"):
        m(np.ones((5, 4, 2), np.float32), (h0,))
    with pytest.raises(TypeError, match="got 3"):
        m(np.ones((5, 4, 2), np.float32), [h0, h0, h0])


# -- test_RNN_input_size_zero: an empty batch ---------------------------------------------------
@pytest.mark.parametrize("cls,tcls", MODULES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rnn_empty_batch(cls, tcls, backend):
    ours, ref = cls(3, 4, num_layers=2, bidirectional=True, backend=backend), \
        tcls(3, 4, num_layers=2, bidirectional=True)
    ours.load_state_dict(t2n(ref.state_dict()))
    x = np.zeros((5, 0, 3), np.float32)
    xt = torch.zeros((5, 0, 3), requires_grad=True)
    y, st = ours(x)
    yt, stt = ref(xt)
    assert y.shape == tuple(yt.shape) == (5, 0, 8)
    h = st[0] if cls is gl.LSTM else st
    assert h.shape == tuple((stt[0] if cls is gl.LSTM else stt).shape) == (4, 0, 4)
    yt.sum().backward()
    dx = ours.backward(np.ones_like(y))
    assert dx.shape == (5, 0, 3)
    tg = torch_grads(ref)
    for k, g in ours.grads.items():
        np.testing.assert_array_equal(ours.ex.to_numpy(g), tg[k])
    with pytest.raises(ValueError, match="at least one time step"):
        ours(np.zeros((0, 2, 3), np.float32))  # T = 0 stays an error


# -- dropout ---------------------------------------------------------------------------------
def _dropout_pair_outputs(p, backend):
    """torch's test_RNN_dropout setup: a 2-layer relu RNN, W_ih = 1, W_hh = 0, no bias, input
    ones: layer 1 gives 10 per unit, layer 2 sums the 1000 dropped-out units."""
    m = gl.RNN(10, 1000, 2, "relu", False, dropout=p, backend=backend, dtype="float64", seed=1)
    sd = m.state_dict()
    m.load_state_dict({k: (np.ones_like(v) if "ih" in k else np.zeros_like(v)) for k, v in sd.items()})
    out, hy = m(np.ones((1, 1, 10)), np.zeros((2, 1, 1000)))
    return m.ex.to_numpy(out), m.ex.to_numpy(hy)


@pytest.mark.parametrize("p", [0, 0.276, 0.731, 1])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rnn_dropout(p, backend):
    out, hy = _dropout_pair_outputs(p, backend)
    np.testing.assert_array_equal(hy[0], 10)  # the first layer's state is not dropped out
    denorm = out[0, 0] * (1 - p) / 10 if p < 1 else out[0, 0]
    if p == 0:
        np.testing.assert_array_equal(out, 10000)
    elif p == 1:
        np.testing.assert_array_equal(out, 0)
    else:
        assert np.all(out == out[0, 0, 0])  # every unit sums the same kept units
        kept = denorm[0]
        np.testing.assert_allclose(kept, round(kept), rtol=1e-9)  # an integer count
        assert 0.8 * (1 - p) * 1000 < kept < 1.2 * (1 - p) * 1000
    np.testing.assert_array_equal(hy[1], out[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_rnn_change_dropout(backend, rng):
    """Setting ``m.dropout`` after construction takes effect (as in torch) and is validated."""
    m = gl.LSTM(4, 6, num_layers=3, dropout=0.0, backend=backend, seed=2)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    for p in (0, 0.276, 0.731, 1, 0.5):
        m.dropout = p
        m.train()
        a, b = m.ex.to_numpy(m(x)[0]), m.ex.to_numpy(m(x)[0])
        assert np.isfinite(a).all() and np.isfinite(b).all()
        if p in (0, 1):
            np.testing.assert_array_equal(a, b)
        else:
            assert not np.array_equal(a, b)
        m.eval()
        np.testing.assert_array_equal(m.ex.to_numpy(m(x)[0]), m.ex.to_numpy(m(x)[0]))
    for bad in (1.5, -0.1, "0.5", None, True):
        with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\]"):
            m.dropout = bad
    assert m.dropout == 0.5


def test_dropout_one_matches_torch(rng):
    """p = 1: every between-layer activation is zero, as in torch (the last layer then sees
    only its biases)."""
    torch.manual_seed(0)
    ref = torch.nn.GRU(3, 4, 2, dropout=1.0).double()
    ours = gl.GRU(3, 4, 2, dropout=1.0, backend="numpy", dtype="float64")
    ours.load_state_dict(t2n(ref.state_dict()))
    x = rng.standard_normal((6, 2, 3))
    np.testing.assert_allclose(ours(x)[0], ref(torch.tensor(x))[0].detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("cls,tcls", MODULES)
def test_dropout_with_one_layer_warns_like_torch(cls, tcls):
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1") as ours:
        cls(2, 3, dropout=0.5, backend="numpy")
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        tcls(2, 3, dropout=0.5)
    assert ours[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(2, 3, num_layers=2, dropout=0.5, backend="numpy")
        cls(2, 3, dropout=0.0, backend="numpy")


# -- test_variable_sequence and padding ------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_variable_sequence_matches_torch_packed_and_per_sequence(cell, rng):
    """Lengths against torch's packed sequences, and against each sequence run alone
    (unbatched) through gpulstm."""
    ours, ref = make_pair(cell, 3, 5, num_layers=2, bidirectional=True)
    lengths = [7, 3, 5, 1]
    p = random_problem(rng, ours, 7, 4, lengths)
    assert_close(ours_run(ours, **p), torch_run(ref, **p), 1e-12)
    y_all = ours(p["x"], (p["h0"], p["c0"]) if cell == "lstm" else p["h0"], lengths=lengths)[0]
    for b, n in enumerate(lengths):
        hb = p["h0"][:, b]
        y_b = ours(p["x"][:n, b], (hb, p["c0"][:, b]) if cell == "lstm" else hb)[0]
        np.testing.assert_allclose(y_all[:n, b], y_b, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(y_all[n:, b], 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(cell="lstm"), dict(cell="lstm", proj_size=2), dict(cell="gru"),
                                dict(cell="rnn_tanh")])
def test_nonfinite_padding_does_not_reach_the_gradients(backend, kw, rng):
    """NaN/inf at t >= lengths[b] is never read: outputs and every gradient equal those of
    the same batch with zeros in the padding, and torch's packed sequences."""
    dtype = "float64" if backend != "cupy" else "float32"
    ours, ref = make_pair(kw["cell"], 3, 4, num_layers=2, bidirectional=True,
                          proj_size=kw.get("proj_size", 0), backend=backend, dtype=dtype)
    lengths = [6, 2, 4]
    p = random_problem(rng, ours, 6, 3, lengths, dtype=np.dtype(dtype).type)
    for b, n in enumerate(lengths):
        p["x"][n:, b] = np.nan
    p["x"][-1, 1, 0] = np.inf
    got = ours_run(ours, **p)
    for k, g in got["grads"].items():
        assert np.isfinite(g).all(), k
    assert np.isfinite(got["dx"]).all()
    clean = dict(p, x=np.where(np.isfinite(p["x"]), p["x"], 0))
    assert_close(got, torch_run(ref, **clean), 1e-12 if dtype == "float64" else 1e-5)


# -- test_rnn_retain_variables ---------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_backward_twice_like_retain_graph(cell, rng):
    """Intended difference: the saved forward stays until the next forward, so a second
    backward gives the same gradients (torch needs retain_graph=True)."""
    ours, ref = make_pair(cell, 3, 4, num_layers=2)
    p = random_problem(rng, ours, 5, 2)
    first = ours_run(ours, **p)
    x, h0 = torch.tensor(p["x"]), torch.tensor(p["h0"])
    hx = (h0, torch.tensor(p["c0"])) if cell == "lstm" else h0
    y, _ = ref(x, hx)
    gy = torch.tensor(p["gy"])
    grads = []
    for _ in range(2):
        ref.zero_grad()
        (y * gy).sum().backward(retain_graph=True)
        grads.append(torch_grads(ref))
    dx2 = ours.backward(p["gy"], p["gh"], p["gc"]) if cell == "lstm" else ours.backward(p["gy"], p["gh"])
    np.testing.assert_array_equal(dx2, first["dx"])
    for k in grads[0]:
        np.testing.assert_array_equal(grads[0][k], grads[1][k])


# -- no-batch-dim inputs (common_modules.py) -------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_input_matches_torch(cell, batch_first, backend, rng):
    dtype = "float64" if backend != "cupy" else "float32"
    ours, ref = make_pair(cell, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                          proj_size=2 if cell == "lstm" else 0, backend=backend, dtype=dtype)
    to = ours.ex.to_numpy
    T, LD, Hs, H = 5, 4, ours.proj_size or 4, 4
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    x, h0, c0, gy, gh = r(T, 3), r(LD, Hs), r(LD, H), r(T, 2 * Hs), r(LD, Hs)
    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    lstm = cell == "lstm"
    yt, st = ref(xt, (h0t, c0t) if lstm else h0t)
    hnt = st[0] if lstm else st
    ((yt * torch.tensor(gy)).sum() + (hnt * torch.tensor(gh)).sum()).backward()
    y, st = ours(x, (h0, c0) if lstm else h0)
    hn = st[0] if lstm else st
    assert y.shape == tuple(yt.shape) == (T, 2 * Hs) and hn.shape == tuple(hnt.shape) == (LD, Hs)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(to(y), yt.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(to(hn), hnt.detach().numpy(), rtol=tol, atol=tol)
    dx = ours.backward(gy, gh)
    np.testing.assert_allclose(to(dx), xt.grad.numpy(), rtol=tol, atol=tol)
    dh0 = ours.grad_hx[0] if lstm else ours.grad_hx
    np.testing.assert_allclose(to(dh0), h0t.grad.numpy(), rtol=tol, atol=tol)
    if lstm:
        np.testing.assert_allclose(to(ours.grad_hx[1]), c0t.grad.numpy(), rtol=tol, atol=tol)
    for k, g in torch_grads(ref).items():
        np.testing.assert_allclose(to(ours.grads[k]), g, rtol=tol, atol=tol, err_msg=k)


def test_unbatched_state_dimensions_must_agree_with_input():
    """torch: 'For unbatched 2-D input, hx should also be 2-D' (and 3-D for batched)."""
    ref, ours = torch.nn.GRU(3, 4), gl.GRU(3, 4, backend="numpy")
    x2, h3 = np.ones((5, 3), np.float32), np.zeros((1, 1, 4), np.float32)
    with pytest.raises(RuntimeError):
        ref(torch.tensor(x2), torch.tensor(h3))
    with pytest.raises(ValueError, match=r"unbatched 2-D input, h0 must also be 2-D \(1, 4\)"):
        ours(x2, h3)
    x3, h2 = np.ones((5, 1, 3), np.float32), np.zeros((1, 4), np.float32)
    with pytest.raises(RuntimeError):
        ref(torch.tensor(x3), torch.tensor(h2))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 1, 4\); got \(1, 4\)"):
        ours(x3, h2)
    ours(x2)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(5, 4\)"):
        ours.backward(np.ones((5, 1, 4), np.float32))


# -- copies, pickling, state_dict ------------------------------------------------------------
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_deepcopy_and_pickle_round_trip(how, backend, rng):
    m = gl.LSTM(3, 4, num_layers=2, dropout=0.3, backend=backend, seed=4)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = m(x)
    m.backward(np.ones(y.shape, np.float32))
    data = pickle.dumps(m)
    assert b"Execution" not in data and b"pointwise" not in data  # no execution object saved
    c = copy.deepcopy(m) if how == "deepcopy" else pickle.loads(data)
    assert c.ex is m.ex and c.backend == m.backend
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(m.ex.to_numpy(c.state_dict()[k]), m.ex.to_numpy(v))
        np.testing.assert_array_equal(m.ex.to_numpy(c.grads[k]), m.ex.to_numpy(m.grads[k]))
        assert type(c.parameters()[k]) is type(m.parameters()[k])
    with pytest.raises(RuntimeError, match="forward"):  # the saved forward is not copied
        c.backward(np.ones(y.shape, np.float32))
    np.testing.assert_array_equal(m.ex.to_numpy(c(x)[0]), m.ex.to_numpy(m(x)[0]))  # same dropout stream
    c.parameters()["weight_ih_l0"][...] = 0  # independent parameters
    assert np.abs(m.ex.to_numpy(m.parameters()["weight_ih_l0"])).max() > 0


def test_unpickling_a_cupy_module_without_a_gpu_says_so():
    m = gl.GRU(2, 3, backend="numpy")
    m.__dict__["backend"] = "cupy"  # as if saved on a GPU machine (the pickle holds NumPy arrays)
    data = pickle.dumps(m)
    if gl.available_backends()["cupy"] is None:  # a GPU machine: it loads onto the GPU
        c = pickle.loads(data)
        assert c.ex.name == "cupy" and type(c.parameters()["weight_ih_l0"]).__module__.startswith("cupy")
    else:
        with pytest.raises(BackendUnavailable, match=r"saved with backend 'cupy', which cannot "
                                                     r"run here .*state_dict"):
            pickle.loads(data)


def test_load_state_dict_copies_like_torch(rng):
    """After loading torch's state_dict and updating in place, the torch module is unchanged;
    two modules loaded from one dict do not share; read-only sources can be updated."""
    ref = torch.nn.GRU(3, 4)
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    sd = t2n(ref.state_dict())  # views of torch's memory
    a, b = gl.GRU(3, 4, backend="numpy"), gl.GRU(3, 4, backend="numpy")
    a.load_state_dict(sd)
    b.load_state_dict(sd)
    for v in a.parameters().values():
        v -= 0.1  # an in-place training step
    for k, v in ref.state_dict().items():
        assert torch.equal(v, before[k]), k
    np.testing.assert_array_equal(b.state_dict()["weight_hh_l0"], before["weight_hh_l0"].numpy())
    ro = {k: v.copy() for k, v in sd.items()}
    for v in ro.values():
        v.flags.writeable = False
    a.load_state_dict(ro)
    for v in a.parameters().values():
        v *= 2.0


# -- state after misuse ----------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_changing_x_or_parameters_before_backward_does_not_change_gradients(cell, rng):
    """Intended difference: torch raises ('modified by an inplace operation'); gpulstm's
    forward keeps private copies, so backward gives the gradients of that forward."""
    ours, ref = make_pair(cell, 3, 4, num_layers=2)
    p = random_problem(rng, ours, 5, 2)
    expect = torch_run(ref, **p)
    x = p["x"].copy()
    hx = (p["h0"], p["c0"]) if cell == "lstm" else p["h0"]
    ours(x, hx)
    x[...] = 0
    for v in ours.parameters().values():
        v += 1.0
    dx = ours.backward(p["gy"], p["gh"], p["gc"]) if cell == "lstm" else ours.backward(p["gy"], p["gh"])
    np.testing.assert_allclose(dx, expect["dx"], rtol=1e-12, atol=1e-14)
    for k, g in expect["grads"].items():
        np.testing.assert_allclose(ours.grads[k], g, rtol=1e-12, atol=1e-14, err_msg=k)


def test_failed_forward_and_backward_leave_a_clear_state(rng):
    m = gl.LSTM(3, 4, backend="numpy")
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    y, _ = m(x)
    m.backward(np.ones_like(y))
    assert m.grads is not None
    with pytest.raises(TypeError):
        m(x.astype(np.float64))
    with pytest.raises(RuntimeError, match="the last forward.. failed with TypeError: x must have dtype float32"):
        m.backward(np.ones_like(y))
    assert m.grads is None and m.grad_hx is None
    m(x)
    with pytest.raises(ValueError, match="grad_out"):
        m.backward(np.ones((5, 2, 9), np.float32))
    assert m.grads is None and m.grad_hx is None  # no stale gradients of an earlier call
    m.backward(np.ones_like(y))  # the saved forward survives a refused backward
    assert m.grads is not None


def test_huge_sizes_give_a_memory_error_naming_the_buffer():
    with pytest.raises(MemoryError, match=r"parameter weight_ih_l0 of shape \(4000000, 1000000\)"
                                          r": it needs about 16000000000000 bytes"):
        gl.LSTM(10**6, 10**6, backend="numpy")
    m = gl.GRU(1, 2, backend="numpy")
    T, B = 10**7, 10**6
    x = np.broadcast_to(np.float32(0.5), (T, B, 1))  # no memory behind it
    with pytest.raises(MemoryError, match=rf"GRU forward \(T={T}, B={B}, H=2\): it needs about \d+ bytes"):
        m(x)


@pytest.mark.parametrize("face", ["numpy", "torch"])
def test_a_need_beyond_the_machine_fails_before_allocating(face, monkeypatch):
    """A forward whose estimated need exceeds the host's memory and swap is refused at once
    with MemoryError (not started and left to exhaust the machine), on both faces; one that
    fits runs. The limit is simulated: 1 MiB."""
    import gpulstm._checks as checks
    import gpulstm.torch as gt
    from gpulstm import engine
    calls = []
    real_forward = engine.forward
    monkeypatch.setattr(engine, "forward", lambda *a, **k: (calls.append(1), real_forward(*a, **k))[1])
    monkeypatch.setattr(checks, "host_memory_limit", lambda: 2**20)
    rng = np.random.default_rng()
    small, big = rng.standard_normal((5, 2, 3)), rng.standard_normal((2000, 8, 3))
    if face == "numpy":
        m = gl.LSTM(3, 16, backend="numpy", dtype="float64")
        run = m
    else:
        m = gt.LSTM(3, 16, dtype=torch.float64, backend="numpy")

        def run(x):
            return m(torch.tensor(x))
    run(small)
    assert calls == [1]
    with pytest.raises(MemoryError, match=r"forward \(T=2000, B=8, H=16\): it needs about \d+ "
                                          r"bytes .*more than this machine's memory and swap"):
        run(big)
    assert calls == [1]  # refused before the engine allocated anything


def test_backward_out_of_memory_names_the_call(monkeypatch):
    from gpulstm import engine
    m = gl.GRU(1, 2, backend="numpy")
    y, _ = m(np.ones((3, 2, 1), np.float32))

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.00 TiB for an array")
    monkeypatch.setattr(engine, "backward", no_memory)
    with pytest.raises(MemoryError, match=r"GRU backward \(T=3, B=2, H=2\): it needs about \d+ bytes"):
        m.backward(np.ones_like(y))
    assert m.grads is None


# -- misuse found by probing -----------------------------------------------------------------
@pytest.mark.parametrize("name,value", [("hidden_size", 5), ("bidirectional", True),
                                        ("num_layers", 2), ("dtype", np.dtype("float64")),
                                        ("proj_size", 2), ("bias", False), ("backend", "emulated")])
def test_structure_is_fixed_after_construction(name, value):
    """Changing what the parameters' shapes depend on used to fail later with a KeyError or a
    broadcast error (or, for dtype, run with mismatched arrays); it is refused at once."""
    m = gl.LSTM(3, 4, backend="numpy")
    with pytest.raises(AttributeError, match=f"{name} is fixed when the module is built"):
        setattr(m, name, value)
    m.batch_first = True  # layout only: allowed, as in torch
    assert m(np.ones((2, 5, 3), np.float32))[0].shape == (2, 5, 4)


def test_torch_tensor_that_requires_grad_is_refused_clearly(rng):
    m = gl.GRU(3, 4, backend="numpy")
    x = torch.tensor(rng.standard_normal((5, 2, 3)).astype(np.float32), requires_grad=True)
    with pytest.raises(TypeError, match=r"x is a torch tensor that requires grad.*x.detach\(\)"):
        m(x)
    h0 = torch.zeros((1, 2, 4), requires_grad=True)
    with pytest.raises(TypeError, match="h0 is a torch tensor that requires grad"):
        m(x.detach(), h0)
    y, _ = m(x.detach())
    with pytest.raises(TypeError, match="grad_out is a torch tensor that requires grad"):
        m.backward(torch.ones(tuple(y.shape), requires_grad=True))


def test_bfloat16_state_dict_loads(rng):
    ref = torch.nn.GRU(3, 4).to(torch.bfloat16)
    m = gl.GRU(3, 4, backend="numpy")
    m.load_state_dict(ref.state_dict())
    np.testing.assert_array_equal(m.state_dict()["weight_ih_l0"], ref.weight_ih_l0.float().detach().numpy())


def test_empty_batch_takes_empty_lengths():
    y, _ = gl.LSTM(3, 4, backend="numpy")(np.zeros((5, 0, 3), np.float32), lengths=[])
    assert y.shape == (5, 0, 4)


def test_option_types_are_checked():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'"):
        gl.RNN(3, 4, nonlinearity=np.array(["tanh", "relu"]), backend="numpy")
    m = gl.RNN(3, 4, backend="numpy")
    m.record_state_grads = "no"
    m(np.ones((2, 1, 3), np.float32))
    with pytest.raises(TypeError, match="record_state_grads must be a bool; got str"):
        m.backward(np.ones((2, 1, 4), np.float32))


@st.composite
def _padded_configs(draw):
    cell = draw(st.sampled_from(CELLS))
    H = draw(st.integers(1, 6))
    T, B = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    return dict(cell=cell, I=draw(st.integers(1, 4)), H=H, T=T, B=B,
                proj=draw(st.integers(0, H - 1)) if cell == "lstm" else 0,
                L=draw(st.integers(1, 3)), bi=draw(st.booleans()), bf=draw(st.booleans()),
                lengths=draw(st.lists(st.integers(1, T), min_size=B, max_size=B)),
                poison=draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e300])),
                backend=draw(st.sampled_from([b for b in BACKENDS if b != "cupy"])),
                seed=draw(st.integers(0, 2**31)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_padded_configs())
def test_fuzz_poisoned_padding_matches_torch_packed(c):
    """Random shapes and lengths with NaN/inf/huge values in the padding: outputs and every
    gradient equal torch's packed sequences (which never see the padding)."""
    m, ref = make_pair(c["cell"], c["I"], c["H"], num_layers=c["L"], bidirectional=c["bi"],
                       batch_first=c["bf"], proj_size=c["proj"], backend=c["backend"])
    p = random_problem(np.random.default_rng(c["seed"]), m, c["T"], c["B"], lengths=c["lengths"])
    clean = p["x"].copy()
    for b, n in enumerate(c["lengths"]):
        if c["bf"]:
            p["x"][b, n:] = c["poison"]
        else:
            p["x"][n:, b] = c["poison"]
    ours = ours_run(m, **p)
    assert_close(ours, torch_run(ref, **dict(p, x=clean)), 1e-11)

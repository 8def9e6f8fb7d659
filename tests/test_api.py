"""The public contract beyond parity: bad input, state_dict round trips, options, backends."""
import numpy as np
import pytest
import torch

import gpulstm as gl


def lstm(**kw):
    kw.setdefault("backend", "numpy")
    return gl.LSTM(4, 6, **kw)


def x_of(rng, T=5, B=3, I=4, dtype=np.float32):
    return rng.standard_normal((T, B, I)).astype(dtype)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,match", [
    ((5, 7), r"shape \(\*, 4\); got \(5, 7\)"),  # unbatched (T, I)
    ((5,), r"shape \(\*, \*, 4\); got \(5,\)"),
    ((5, 3, 4, 1), r"got \(5, 3, 4, 1\)"),
    ((5, 3, 7), r"shape \(\*, \*, 4\); got \(5, 3, 7\)"),
    ((0, 3, 4), r"at least one time step"),
    ((0, 4), r"at least one time step"),
])
def test_x_shape_errors(shape, match, rng):
    with pytest.raises(ValueError, match=match):
        lstm()(rng.standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("dtype,match", [
    (np.int64, "floating-point array of dtype float32; got dtype int64"),
    (np.float64, "dtype float32 .*got float64"),
    (np.float16, "dtype float32 .*got float16"),
])
def test_x_dtype_errors(dtype, match, rng):
    with pytest.raises(TypeError, match=match):
        lstm()((rng.standard_normal((5, 3, 4)) * 10).astype(dtype))


def test_x_not_an_array():
    with pytest.raises(TypeError, match="x must be"):
        lstm()([[["a"]]])


@pytest.mark.parametrize("which,shape,match", [
    ("h0", (2, 3, 6), r"h0 must have shape \(1, 3, 6\); got \(2, 3, 6\)"),
    ("h0", (1, 3), r"h0 must have shape \(1, 3, 6\); got \(1, 3\)"),
    ("c0", (1, 4, 6), r"c0 must have shape \(1, 3, 6\); got \(1, 4, 6\)"),
    ("c0", (1, 3, 5), r"c0 must have shape \(1, 3, 6\); got \(1, 3, 5\)"),
])
def test_state_shape_errors(which, shape, match, rng):
    h0 = rng.standard_normal(shape if which == "h0" else (1, 3, 6)).astype(np.float32)
    c0 = rng.standard_normal(shape if which == "c0" else (1, 3, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        lstm()(x_of(rng), (h0, c0))


def test_hx_type_errors(rng):
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\)"):
        lstm()(x_of(rng), np.zeros((1, 3, 6), np.float32) + 1)
    with pytest.raises(TypeError, match="dtype float32"):
        lstm()(x_of(rng), (np.ones((1, 3, 6)), np.ones((1, 3, 6))))


@pytest.mark.parametrize("lengths,exc,match", [
    ([5, 0, 2], ValueError, "lengths must be >= 1; got min 0"),
    ([5, -1, 2], ValueError, ">= 1; got min -1"),
    ([5, 6, 2], ValueError, "lengths must be <= T=5; got max 6"),
    ([5, 2], ValueError, "lengths must have B=3 entries; got 2"),
    ([5, 2, 2, 1], ValueError, "B=3 entries; got 4"),
    ([[5, 2, 2]], ValueError, "1-D"),
    ([5.0, 2.0, 2.0], TypeError, "lengths must be integers; got dtype float64"),
    ([True, True, True], TypeError, "integers; got dtype bool"),
])
def test_lengths_errors(lengths, exc, match, rng):
    with pytest.raises(exc, match=match):
        lstm()(x_of(rng), lengths=lengths)


def test_failed_call_mutates_nothing(rng):
    m = lstm()
    x = x_of(rng)
    y, _ = m(x)
    before = {k: v.copy() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError):
        m(x, lengths=[9, 9, 9])
    # a failed forward leaves no saved forward: backward says why instead of using the old one
    gy = rng.standard_normal(y.shape).astype(np.float32)
    with pytest.raises(RuntimeError, match=r"successful forward\(\) first; the last forward\(\) "
                                           r"failed with ValueError: lengths must be <= T=5"):
        m.backward(gy)
    m(x)
    m.backward(gy)
    with pytest.raises(ValueError):
        m.load_state_dict({**before, "weight_hh_l0": np.ones((3, 3))})
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_backward_errors(rng):
    m = lstm()
    with pytest.raises(RuntimeError, match="forward"):
        m.backward(np.ones((5, 3, 6), np.float32))
    m(x_of(rng))
    with pytest.raises(ValueError, match=r"grad_out must have shape \(5, 3, 6\); got \(5, 3, 5\)"):
        m.backward(np.ones((5, 3, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float32"):
        m.backward(np.ones((5, 3, 6)))
    with pytest.raises(ValueError, match=r"grad_c_n must have shape \(1, 3, 6\)"):
        m.backward(np.ones((5, 3, 6), np.float32), None, np.ones((1, 6), np.float32))
    g = gl.GRU(4, 6, backend="numpy")
    g(x_of(rng))
    with pytest.raises(TypeError, match="LSTM only"):
        g.backward(np.ones((5, 3, 6), np.float32), None, np.ones((1, 3, 6), np.float32))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(input_size=0), ValueError, "input_size must be >= 1; got 0"),
    (dict(hidden_size=2.5), TypeError, "hidden_size must be an int; got float"),
    (dict(num_layers=True), TypeError, "num_layers must be an int; got bool"),
    (dict(proj_size=6), ValueError, "proj_size must be < hidden_size=6; got 6"),
    (dict(dropout=1.5), ValueError, r"dropout must be a number in \[0, 1\]"),
    (dict(dropout="0.1"), ValueError, r"dropout must be a number in \[0, 1\]"),
    (dict(seed=-1), ValueError, "seed must be >= 0; got -1"),
    (dict(seed=1.5), TypeError, "seed must be an int; got float"),
    (dict(forget_gate="no"), TypeError, "forget_gate must be a bool; got str 'no'"),
    (dict(peephole="False"), TypeError, "peephole must be a bool; got str 'False'"),
    (dict(forget_bias="a"), TypeError, "forget_bias must be a finite real number"),
    (dict(forget_bias=float("nan")), TypeError, "forget_bias must be a finite real number"),
    (dict(dtype="float16"), TypeError, "dtype must be one of"),
    (dict(dtype="int32"), TypeError, "dtype must be one of"),
    (dict(backend="tpu"), ValueError, "unknown backend 'tpu'"),
    (dict(bidirectional="yes"), TypeError, "bidirectional must be a bool"),
])
def test_constructor_errors(kwargs, exc, match):
    args = dict(input_size=4, hidden_size=6)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        gl.LSTM(args.pop("input_size"), args.pop("hidden_size"), **args)


def test_rnn_options_errors():
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu'; got 'sigmoid'"):
        gl.RNN(2, 3, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="proj_size is supported by LSTM only"):
        gl.GRU(2, 3, proj_size=1)


# -- state_dict ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,tcls,kw", [
    (gl.LSTM, torch.nn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=3)),
    (gl.GRU, torch.nn.GRU, dict(num_layers=3)),
    (gl.RNN, torch.nn.RNN, dict(bidirectional=True, bias=False)),
])
def test_state_dict_names_and_shapes_match_torch(cls, tcls, kw):
    ours = cls(5, 7, backend="numpy", **kw).state_dict()
    theirs = tcls(5, 7, **kw).state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        assert ours[k].shape == tuple(theirs[k].shape), k


def test_load_state_dict_errors(rng):
    m = lstm()
    sd = m.state_dict()
    with pytest.raises(ValueError, match=r"missing \['bias_hh_l0'\], unexpected \[\]"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l0"})
    with pytest.raises(ValueError, match=r"unexpected \['weight_hr_l0'\]"):
        m.load_state_dict({**sd, "weight_hr_l0": np.ones((2, 6))})
    with pytest.raises(ValueError, match=r"state_dict\['weight_ih_l0'\] must have shape \(24, 4\); got \(4, 24\)"):
        m.load_state_dict({**sd, "weight_ih_l0": sd["weight_ih_l0"].T})
    with pytest.raises(TypeError, match="real numeric"):
        m.load_state_dict({**sd, "bias_ih_l0": np.array(["a"] * 24)})
    with pytest.raises(TypeError, match="mapping"):
        m.load_state_dict([1, 2])


def test_state_dict_round_trip_and_copy(rng):
    a, b = lstm(seed=1), lstm(seed=2)
    x = x_of(rng)
    assert not np.allclose(a(x)[0], b(x)[0])
    sd = a.state_dict()
    b.load_state_dict(sd)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    sd["weight_ih_l0"][...] = 0  # a copy: the module is unaffected
    assert np.abs(a.state_dict()["weight_ih_l0"]).max() > 0


def test_initialisation_like_pytorch():
    m = gl.LSTM(10, 64, num_layers=2, backend="numpy", seed=3)
    k = 1 / np.sqrt(64)
    for name, v in m.state_dict().items():
        assert np.abs(v).max() <= k and np.abs(v).max() > 0.9 * k, name
        assert abs(v.mean()) < 0.1 * k, name
    np.testing.assert_array_equal(gl.LSTM(3, 4, seed=5).state_dict()["weight_hh_l0"],
                                  gl.LSTM(3, 4, seed=5).state_dict()["weight_hh_l0"])


def test_forget_bias_option():
    m = gl.LSTM(3, 5, num_layers=2, bidirectional=True, backend="numpy", forget_bias=1.0)
    for k, v in m.state_dict().items():
        if k.startswith("bias_ih"):
            np.testing.assert_array_equal(v[5:10], 1.0)
        if k.startswith("bias_hh"):
            np.testing.assert_array_equal(v[5:10], 0.0)
    with pytest.raises(ValueError, match="bias=True"):
        gl.LSTM(3, 5, bias=False, forget_bias=1.0)


def test_identity_init_rnn(rng):
    m = gl.RNN(3, 5, nonlinearity="relu", init="identity", backend="numpy")
    np.testing.assert_array_equal(m.state_dict()["weight_hh_l0"], np.eye(5))
    np.testing.assert_array_equal(m.state_dict()["bias_hh_l0"], 0)


def test_no_forget_gate_keeps_cell_sum(rng):
    """With f = 1 the cell state is the running sum of i*g: c_T - c_0 = sum_t i_t g_t."""
    m = gl.LSTM(2, 3, forget_gate=False, backend="numpy", dtype="float64")
    x = rng.standard_normal((6, 2, 2))
    c0 = rng.standard_normal((1, 2, 3))
    _, (_, cn) = m(x, (np.zeros((1, 2, 3)), c0))
    gates = m._ctx.saved[0][0]["gates"]
    np.testing.assert_allclose(cn[0] - c0[0], (gates[..., :3] * gates[..., 6:9]).sum(0), rtol=1e-12)
    np.testing.assert_array_equal(gates[..., 3:6], 1.0)


def test_dropout_seeded_and_training_mode(rng):
    x = x_of(rng, T=4, B=2)
    a = gl.LSTM(4, 6, num_layers=3, dropout=0.5, backend="numpy", seed=11)
    b = gl.LSTM(4, 6, num_layers=3, dropout=0.5, backend="numpy", seed=11)
    ya, yb = a(x)[0], b(x)[0]
    np.testing.assert_array_equal(ya, yb)  # same seed, same masks
    assert not np.array_equal(ya, a(x)[0])  # fresh masks per call
    a.eval()
    nodrop = gl.LSTM(4, 6, num_layers=3, backend="numpy", seed=11)
    np.testing.assert_array_equal(a(x)[0], nodrop(x)[0])
    assert len(a._ctx.masks) == 0


def test_batch_first_layout(rng):
    m = gl.GRU(4, 6, batch_first=True, backend="numpy", dtype="float64")
    t = gl.GRU(4, 6, backend="numpy", dtype="float64")
    t.load_state_dict(m.state_dict())
    x = rng.standard_normal((3, 5, 4))  # (B, T, I)
    y, _ = m(x)
    yt, _ = t(x.transpose(1, 0, 2).copy())
    np.testing.assert_array_equal(y, yt.transpose(1, 0, 2))
    g = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(m.backward(g), t.backward(g.transpose(1, 0, 2).copy()).transpose(1, 0, 2))


def test_accepts_torch_cpu_tensors(rng):
    m = gl.LSTM(4, 6, backend="numpy")
    x = x_of(rng)
    np.testing.assert_array_equal(m(torch.from_numpy(x))[0], m(x)[0])


def test_backends_registry():
    assert gl.get_backend("numpy").name == "numpy"
    assert gl.get_backend("auto").name in ("numpy", "cpu", "cupy")
    with pytest.raises(TypeError, match="backend must be a str"):
        gl.get_backend(3)
    av = gl.available_backends()
    assert av["numpy"] is None and set(av) >= {"numpy", "cupy", "emulated"}


def test_state_grads_recording(rng):
    """record_state_grads keeps dL/dh_t: dL/dh_{T-1} equals grad_h_n + dy_{T-1}, and the first
    step's state gradient maps to grad_hx through one more step (checked with T=1)."""
    m = gl.RNN(3, 4, backend="numpy", dtype="float64")
    m.record_state_grads = True
    x = rng.standard_normal((6, 2, 3))
    y, _ = m(x)
    gy = rng.standard_normal(y.shape)
    gh = rng.standard_normal((1, 2, 4))
    m.backward(gy, gh)
    dh = m.state_grads[0][0]["dh"]
    assert dh.shape == (6, 2, 4)
    np.testing.assert_allclose(dh[-1], gh[0] + gy[-1], rtol=1e-14)
    # dL/dh_{t-1} = gy_{t-1} + W_hh^T (dL/dh_t * (1 - h_t^2))
    S = m._ctx.saved[0][0]["S"]
    W = m.state_dict()["weight_hh_l0"]
    for t in range(1, 6):
        back = (dh[t] * (1 - S[t + 1] ** 2)) @ W + gy[t - 1]
        np.testing.assert_allclose(dh[t - 1], back, rtol=1e-12)


@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, proj_size=3)])
def test_saved_bytes_covers_what_forward_keeps(kw, rng):
    """The out-of-memory message's byte count is at least what the forward really saves."""
    from gpulstm import engine
    m = gl.LSTM(4, 6, backend="numpy", **kw)
    T, B = 7, 3
    m(x_of(rng, T=T, B=B))
    kept = sum(a.nbytes for saved in m._ctx.saved for s in saved
               for k, a in s.items() if k in ("S", "Y", "gates", "C", "M"))
    need = engine.saved_bytes(m._make_cell(), T, B, 4, 6, m.proj_size or 6, m.num_layers,
                              m.num_directions, 4)
    assert kept <= need <= 2 * kept


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_accurate_and_quiet_in_both_tails(dtype):
    """1 / (1 + exp(-x)) without warnings at any x, to a few ulp of the exact value."""
    import math
    import warnings

    from gpulstm.backends.numpy_pointwise import sigmoid
    x = np.array([-1000, -100, -80, -30, -20, -1, 0, 1, 20, 30, 100, 1000], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sigmoid(x)
    assert got.dtype == dtype

    def exact(v):  # float64 of the exact value (math.exp(-v) of a large v overflows: value 0-ish)
        v = float(v)
        return 1 / (1 + math.exp(-v)) if v > -700 else 0.0

    want = np.array([exact(v) for v in x]).astype(dtype)
    tiny = np.finfo(dtype).tiny
    np.testing.assert_allclose(got[want > tiny], want[want > tiny], rtol=4 * np.finfo(dtype).eps)
    assert np.all(got[want <= tiny] <= tiny)

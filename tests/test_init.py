"""gpulstm.init.initialize: forget-gate, chrono (Tallec & Ollivier 2018) and GRU update-gate
bias initialisation on PyTorch-named parameter dicts."""
import numpy as np
import pytest

import gpulstm as gl
from gpulstm.init import initialize

H = 12


def _lstm_params(num_layers=2, bidirectional=True, seed=0):
    return gl.LSTM(5, H, num_layers=num_layers, bidirectional=bidirectional, backend="numpy",
                   dtype="float64", seed=seed).state_dict()


def test_forget_bias_sets_the_forget_block_sum_and_nothing_else():
    p = _lstm_params()
    before = {k: v.copy() for k, v in p.items()}
    q = initialize(p, "LSTM", H, forget_bias=3.0)
    bias_ih = [k for k in p if k.startswith("bias_ih")]
    assert len(bias_ih) == 4  # 2 layers x 2 directions
    for k in bias_ih:
        hh = k.replace("_ih_", "_hh_")
        np.testing.assert_array_equal(q[k][H:2 * H] + q[hh][H:2 * H], 3.0)
        np.testing.assert_array_equal(q[hh][H:2 * H], 0.0)
        for s in (slice(0, H), slice(2 * H, 4 * H)):  # i, g, o untouched
            np.testing.assert_array_equal(q[k][s], p[k][s])
            np.testing.assert_array_equal(q[hh][s], p[hh][s])
    for k, v in p.items():  # the input is not modified; weights pass through as the same object
        np.testing.assert_array_equal(v, before[k])
        if k.startswith("weight"):
            assert q[k] is v


def test_forget_bias_loads_into_torch_and_gpulstm():
    torch = pytest.importorskip("torch")
    t = torch.nn.LSTM(5, H, num_layers=2, bidirectional=True)
    sd = {k: v.detach().numpy() for k, v in t.state_dict().items()}
    t.load_state_dict({k: torch.from_numpy(v) for k, v in
                       initialize(sd, "LSTM", H, forget_bias=3.0).items()})
    for k in ("l0", "l1_reverse"):
        s = (t.state_dict()[f"bias_ih_{k}"] + t.state_dict()[f"bias_hh_{k}"])[H:2 * H]
        assert torch.equal(s, torch.full((H,), 3.0))
    m = gl.LSTM(5, H, backend="numpy", seed=1)
    m.load_state_dict(initialize(m.state_dict(), "LSTM", H, forget_bias=-2.5))
    np.testing.assert_array_equal(m.state_dict()["bias_ih_l0"][H:2 * H], -2.5)


def test_chrono_draws_log_uniform_forget_bias_and_its_negative_input_bias():
    t_max = 50
    p = gl.LSTM(3, 4000, num_layers=1, bidirectional=True, backend="numpy",
                dtype="float64").state_dict()
    q = initialize(p, "LSTM", 4000, t_max=t_max, rng=7)
    Hb = 4000
    draws = []
    for k in ("l0", "l0_reverse"):
        ih, hh = q[f"bias_ih_{k}"], q[f"bias_hh_{k}"]
        bf = ih[Hb:2 * Hb]
        np.testing.assert_array_equal(ih[:Hb], -bf)
        np.testing.assert_array_equal(hh[:2 * Hb], 0.0)
        np.testing.assert_array_equal(ih[2 * Hb:], p[f"bias_ih_{k}"][2 * Hb:])
        u = np.exp(bf)  # ~ U[1, t_max - 1]
        assert u.min() >= 1.0 and u.max() <= t_max - 1
        assert abs(u.mean() - t_max / 2) < 0.05 * t_max  # the mean of U[1, 49] is 25
        edges = np.linspace(1.0, t_max - 1, 5)  # quartiles of the uniform hold about 1/4 each
        counts = np.histogram(u, edges)[0] / Hb
        np.testing.assert_allclose(counts, 0.25, atol=0.03)
        draws.append(bf)
    assert not np.array_equal(draws[0], draws[1])  # each direction draws its own
    again = initialize(p, "LSTM", 4000, t_max=t_max, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(again["bias_ih_l0"], q["bias_ih_l0"])


def test_gru_update_bias_makes_the_unit_keep_its_state():
    m = gl.GRU(4, H, backend="numpy", dtype="float64", seed=3)
    p = m.state_dict()
    q = initialize(p, "GRU", H, update_bias=20.0)
    np.testing.assert_array_equal(q["bias_ih_l0"][H:2 * H], 20.0)
    np.testing.assert_array_equal(q["bias_hh_l0"][H:2 * H], 0.0)
    np.testing.assert_array_equal(q["bias_ih_l0"][:H], p["bias_ih_l0"][:H])  # r untouched
    m.load_state_dict(q)
    rng = np.random.default_rng(0)
    x, h0 = rng.normal(size=(30, 2, 4)), rng.normal(size=(1, 2, H))
    _, hT = m(x, h0)
    np.testing.assert_allclose(np.asarray(hT), h0, atol=1e-6)  # z ~ 1: h carried unchanged
    m.load_state_dict(p)  # the default init forgets h0 over 30 steps
    _, hT = m(x, h0)
    assert np.abs(np.asarray(hT) - h0).max() > 0.1


@pytest.mark.parametrize("kwargs, mode, exc, match", [
    ({"forget_bias": 1.0}, "GRU", ValueError, "forget_bias does not apply"),
    ({"update_bias": 1.0}, "LSTM", ValueError, "update_bias does not apply"),
    ({"forget_bias": 1.0}, "RNN_TANH", ValueError, "does not apply"),
    ({"forget_bias": 1.0, "t_max": 10}, "LSTM", ValueError, "not both"),
    ({"t_max": 2}, "LSTM", ValueError, "t_max must be > 2"),
    ({"t_max": float("inf")}, "LSTM", TypeError, "t_max must be a finite real"),
    ({"forget_bias": True}, "LSTM", TypeError, "forget_bias must be a finite real"),
    ({"forget_bias": "3"}, "LSTM", TypeError, "forget_bias must be a finite real"),
    ({"t_max": 10, "rng": "seed"}, "LSTM", TypeError, "rng must be"),
    ({"forget_bias": 1.0}, "lstm", ValueError, "mode must be one of"),
])
def test_bad_arguments_name_what_was_expected(kwargs, mode, exc, match):
    with pytest.raises(exc, match=match):
        initialize(_lstm_params(1, False), mode, H, **kwargs)


def test_bad_params_name_what_was_expected():
    p = _lstm_params(1, False)
    with pytest.raises(ValueError, match=r"expected \(4 \* hidden_size,\) = \(52,\)"):
        initialize(p, "LSTM", H + 1, forget_bias=1.0)
    with pytest.raises(ValueError, match="needs bias parameters"):
        initialize({"weight_ih_l0": p["weight_ih_l0"]}, "LSTM", H, forget_bias=1.0)
    with pytest.raises(TypeError, match="mapping"):
        initialize([1, 2], "LSTM", H, forget_bias=1.0)
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        initialize(p, "LSTM", 0, forget_bias=1.0)
    with pytest.raises(TypeError, match="floating-point"):
        initialize(dict(p, bias_ih_l0=np.zeros(4 * H, dtype=np.int64)), "LSTM", H, forget_bias=1.0)

"""The layers' bias-initialisation options (gpulstm.init through both faces): forget_bias,
init="chrono" with t_max, GRU update_bias; the options reach the parameters, draws follow the
seed, and bad combinations are refused."""
import numpy as np
import pytest

import gpulstm as gl

H = 6


def _blocks(b):
    return [b[k * H:(k + 1) * H] for k in range(len(b) // H)]


def test_lstm_forget_bias_and_chrono_set_the_gate_biases():
    sd = gl.LSTM(3, H, 2, bidirectional=True, backend="numpy", forget_bias=3.0, seed=2).state_dict()
    for k in [k for k in sd if k.startswith("bias_ih")]:
        assert np.all(_blocks(sd[k])[1] == 3.0)
        assert np.all(_blocks(sd[k.replace("ih", "hh")])[1] == 0.0)
    a = gl.LSTM(3, H, 2, backend="numpy", init="chrono", t_max=40, seed=5).state_dict()
    b = gl.LSTM(3, H, 2, backend="numpy", init="chrono", t_max=40, seed=5).state_dict()
    c = gl.LSTM(3, H, 2, backend="numpy", init="chrono", t_max=40, seed=6).state_dict()
    i, f = _blocks(a["bias_ih_l1"])[:2]
    assert np.array_equal(i, -f) and np.all((f >= 0) & (f <= np.log(39) + 1e-6))
    assert np.array_equal(a["bias_ih_l1"], b["bias_ih_l1"])
    assert not np.array_equal(a["bias_ih_l1"], c["bias_ih_l1"])
    assert not np.array_equal(a["bias_ih_l0"][H:2 * H], a["bias_ih_l1"][H:2 * H])
    # the weights themselves are the default draw of the seed
    d = gl.LSTM(3, H, 2, backend="numpy", seed=5).state_dict()
    assert np.array_equal(a["weight_hh_l1"], d["weight_hh_l1"])


def test_gru_update_bias():
    sd = gl.GRU(3, H, backend="numpy", update_bias=2.5, seed=1).state_dict()
    assert np.all(_blocks(sd["bias_ih_l0"])[1] == 2.5) and np.all(_blocks(sd["bias_hh_l0"])[1] == 0)


@pytest.mark.parametrize("cls, kw, err", [
    (gl.LSTM, dict(init="chrono"), ValueError),
    (gl.LSTM, dict(t_max=10), ValueError),
    (gl.LSTM, dict(init="glorot"), ValueError),
    (gl.LSTM, dict(forget_bias=1.0, init="chrono", t_max=10), ValueError),
    (gl.LSTM, dict(forget_bias=1.0, bias=False), ValueError),
    (gl.LSTM, dict(forget_bias="1"), TypeError),
    (gl.RNN, dict(update_bias=1.0), TypeError),
])
def test_bad_init_options_are_refused(cls, kw, err):
    with pytest.raises(err):
        cls(3, H, backend="numpy", **kw)


def test_torch_face_applies_the_same_options():
    torch = pytest.importorskip("torch")
    from gpulstm import torch as gt
    torch.manual_seed(0)
    m = gt.LSTM(3, H, 2, forget_bias=3.0)
    assert torch.all(m.bias_ih_l1[H:2 * H] == 3.0) and torch.all(m.bias_hh_l1[H:2 * H] == 0)
    torch.manual_seed(1)
    a = gt.LSTM(3, H, init="chrono", t_max=30)
    torch.manual_seed(1)
    b = gt.LSTM(3, H, init="chrono", t_max=30)
    assert torch.equal(a.bias_ih_l0, b.bias_ih_l0)
    assert torch.equal(a.bias_ih_l0[:H], -a.bias_ih_l0[H:2 * H])
    g = gt.GRU(3, H, update_bias=2.0)
    assert torch.all(g.bias_ih_l0[H:2 * H] == 2.0)
    m.reset_parameters()  # re-applied after the default draw
    assert torch.all(m.bias_ih_l0[H:2 * H] == 3.0)
    with pytest.raises(ValueError):
        gt.LSTM(3, H, init="chrono")
    with pytest.raises(ValueError):
        gt.GRU(3, H, bias=False, update_bias=1.0)

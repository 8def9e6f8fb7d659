"""The engine runs any cell that declares its own buffers and gradient terms (gpulstm.cells):
a cell the library does not know, with a parameter of its own, runs forward and backward
through the unchanged engine, checked against a plain NumPy loop and finite differences."""
import numpy as np
import pytest

from gpulstm import engine
from gpulstm.backends import get_backend
from gpulstm.cells import Cell, GRUCell, LSTMCell, RNNCell

from numgrad import numeric_grad


class LeakyCell(Cell):
    """h_t = (1 - a) h_{t-1} + a tanh(x W_ih^T + h_{t-1} W_hh^T + b), a per-unit leak ``w["leak"]``
    (its gradient comes from the cell, not the engine); saves tanh(.) per step."""
    name = kind = "leaky"
    gates = 1

    def init_forward(self, ex, w, s, c0):
        s["leak"] = w["leak"]

    def init_backward(self, ex, w, s, g, dc_n):
        super().init_backward(ex, w, s, g, dc_n)
        g["dleak"] = ex.xp.zeros_like(w["leak"])

    def step_forward(self, ex, w, s, t, prev, nxt, flags):
        S, a = s["S"], s["leak"]
        ex.matmul(S[prev], s["w_hh_T"], out=s["gh"])
        u = np.tanh(s["gx"][t] + s["gh"])
        s["gates"][t] = u
        S[nxt] = (1 - a) * S[prev] + a * u
        s["Y"][t] = S[nxt]

    def step_backward(self, ex, w, s, g, t, prev, nxt, flags):
        a, u = s["leak"], s["gates"][t]
        d = g["dh"] + g["dY"][t]
        g["dleak"] += (d * (u - s["S"][prev])).sum(axis=0)
        g["dGx"][t] = d * a * (1 - u * u)
        g["dh"][...] = d * (1 - a)
        ex.matmul_acc(g["dGx"][t], w["w_hh"], out=g["dh"])

    def extra_grads(self, ex, w, s, g):
        return {"leak": g["dleak"]}


def _setup(rng, T=5, B=3, I=4, H=6):
    w = {"w_ih": rng.standard_normal((H, I)) * 0.5, "w_hh": rng.standard_normal((H, H)) * 0.5,
         "b_ih": rng.standard_normal(H) * 0.1, "b_hh": rng.standard_normal(H) * 0.1,
         "leak": rng.uniform(0.2, 0.9, H)}
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((1, B, H))
    gy = rng.standard_normal((T, B, H))
    return w, x, h0, gy


def _reference(w, x, h0):
    h, ys = h0[0], []
    for xt in x:
        u = np.tanh(xt @ w["w_ih"].T + h @ w["w_hh"].T + w["b_ih"] + w["b_hh"])
        h = (1 - w["leak"]) * h + w["leak"] * u
        ys.append(h)
    return np.stack(ys)


def test_a_new_cell_runs_through_the_engine_forward_and_backward():
    rng = np.random.default_rng()
    ex = get_backend("numpy")
    w, x, h0, gy = _setup(rng)
    T, B, _ = x.shape
    lens = np.full(B, T, np.int32)
    cell = LeakyCell()
    y, h_n, c_n, ctx = engine.forward(ex, cell, [[w]], x, h0, None, lens)
    np.testing.assert_allclose(y, _reference(w, x, h0), rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(h_n[0], y[-1])
    assert c_n is None
    dx, dh0, dc0, grads = engine.backward(ex, ctx, gy)
    assert dc0 is None

    def loss():
        return float((_reference(w, x, h0) * gy).sum())

    for key in ("w_ih", "w_hh", "b_ih", "b_hh", "leak"):
        np.testing.assert_allclose(grads[0][0][key], numeric_grad(loss, w[key]), rtol=1e-6,
                                   atol=1e-8, err_msg=key)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dh0, numeric_grad(loss, h0), rtol=1e-6, atol=1e-8)


# T=4, B=3: the LSTM adds C [T+1,B,H] (120 elements at H=8) and, projecting, M [T,B,H] (96)
@pytest.mark.parametrize("cell,H,Hs,extra", [
    (RNNCell(), 8, 8, 0), (GRUCell(), 8, 8, 0), (LSTMCell(), 8, 8, 120), (LSTMCell(), 8, 5, 216)])
def test_saved_elements_count_each_cells_buffers(cell, H, Hs, extra):
    T, B = 4, 3
    base = (T + 1) * B * Hs + T * B * Hs + T * B * cell.saved_width(H)
    assert cell.saved_elements(T, B, H, Hs) == base + extra


def test_engine_and_modules_do_not_ask_which_cell_they_run():
    """The one-way house: cell specifics live in the cells, not in the engine or the layers."""
    import ast
    import inspect

    from gpulstm import modules

    tree = ast.parse(inspect.getsource(engine))
    for node in ast.walk(tree):  # code only: docstrings may name the cells' buffers
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    src = ast.unparse(tree)
    for word in ("'gru'", "'lstm'", "peep", "w_hr", "b_hn", ".name"):
        assert word not in src, f"engine.py mentions {word}: cell-specific code outside cells.py"
    assert "isinstance(self, LSTM)" not in inspect.getsource(modules)

"""Parity with torch.nn.LSTM / GRU / RNN (torch 2.13, CPU) for outputs, final states and every
gradient, on the NumPy backend (and the relu RNN's NaN handling on every execution). float64 near round-off; float32 to a tight relative tolerance."""
import numpy as np
import pytest
import torch

import gpulstm as gl
from torch_ref import assert_close, make_pair, ours_run, random_problem, torch_run

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
# (I, H, T, B, layers, bidirectional, batch_first, proj)
SHAPES = [
    (5, 37, 1, 3, 1, False, False, 0),
    (4, 37, 129, 3, 1, False, False, 0),
    (6, 8, 7, 1, 3, True, True, 0),
    (3, 16, 12, 5, 2, True, False, 0),
    (7, 12, 9, 4, 3, False, True, 5),   # proj (LSTM only)
    (2, 9, 6, 2, 2, True, False, 3),    # proj + bidirectional (LSTM only)
]
TOL = {"float64": 1e-12, "float32": 2e-5}


def _cases():
    for cell in CELLS:
        for shape in SHAPES:
            if shape[-1] and cell != "lstm":
                continue
            yield cell, shape


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell,shape", list(_cases()), ids=lambda v: str(v).replace(" ", ""))
def test_parity(cell, shape, dtype, rng):
    I, H, T, B, L, bi, bf, proj = shape
    m, ref = make_pair(cell, I, H, num_layers=L, bidirectional=bi, batch_first=bf, proj_size=proj,
                       dtype=dtype)
    p = random_problem(rng, m, T, B, dtype=np.dtype(dtype))
    assert_close(ours_run(m, **p), torch_run(ref, **p), TOL[dtype])


LENGTH_CONFIGS = [(cell, *cfg) for cell in CELLS
                  for cfg in [(False, 1, False, 0), (True, 2, True, 0), (True, 3, False, 4)]
                  if cell == "lstm" or not cfg[-1]]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("cell,bi,L,bf,proj", LENGTH_CONFIGS)
def test_parity_variable_lengths(cell, bi, L, bf, proj, dtype, rng):
    """Variable-length batches against pack_padded_sequence (unsorted lengths, one full)."""
    I, H, T, B = 3, 11, 10, 6
    m, ref = make_pair(cell, I, H, num_layers=L, bidirectional=bi, batch_first=bf, proj_size=proj,
                       dtype=dtype)
    lengths = rng.permutation([T, 1, 4, 7, 2, T - 1])
    p = random_problem(rng, m, T, B, lengths=lengths, dtype=np.dtype(dtype))
    ours, theirs = ours_run(m, **p), torch_run(ref, **p)
    assert_close(ours, theirs, TOL[dtype])
    # padded outputs are exactly zero
    y = ours["y"] if not bf else ours["y"].transpose(1, 0, 2)
    for b, n in enumerate(lengths):
        assert np.all(y[n:, b] == 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_parity_no_bias(cell, rng):
    m, ref = make_pair(cell, 4, 6, num_layers=2, bias=False)
    p = random_problem(rng, m, 5, 3)
    assert_close(ours_run(m, **p), torch_run(ref, **p), 1e-12)


@pytest.mark.parametrize("backend,algo", [("numpy", "auto"), ("cpu", "auto"),
                                          ("emulated", "stepwise"), ("emulated", "fused")])
def test_relu_rnn_propagates_nan_like_torch(backend, algo):
    """A NaN input element of a relu RNN: torch's relu keeps NaN (NaN goes on through the
    recurrence), and its backward passes the gradient where h is NaN (threshold_backward:
    0 only where h <= 0). Every execution gives torch's NaN pattern and values."""
    from conftest import backend_or_skip
    backend_or_skip(backend)
    rng = np.random.default_rng(5)
    T, B, I, H = 6, 3, 3, 4
    m = gl.RNN(I, H, nonlinearity="relu", backend=backend, algo=algo, dtype="float64", seed=2)
    ref = torch.nn.RNN(I, H, nonlinearity="relu", dtype=torch.float64)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in m.state_dict().items()})
    x = rng.standard_normal((T, B, I))
    x[2, 1, 0] = np.nan  # row 1 turns NaN from t=2 on; rows 0 and 2 stay finite
    y, h_n = m(x)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    yt, ht = ref(xt)
    want = yt.detach().numpy()
    assert np.isnan(want[2:, 1]).all() and np.isfinite(want[:, [0, 2]]).all()
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-12, atol=1e-14, equal_nan=True)
    np.testing.assert_allclose(np.asarray(h_n), ht.detach().numpy(), rtol=1e-12, atol=1e-14,
                               equal_nan=True)
    gy = rng.standard_normal(y.shape)
    dx = m.backward(gy)  # row 1: torch passes dh where h is NaN, so dx there is finite
    yt.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-14,
                               equal_nan=True)
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(np.asarray(m.grads[name]), p.grad.numpy(), rtol=1e-12,
                                   atol=1e-14, equal_nan=True, err_msg=name)

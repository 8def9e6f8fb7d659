"""PyTorch as the parity oracle: build the torch twin of a gpulstm module and run it."""
import numpy as np
import torch

import gpulstm as gl

TORCH_CLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN}


def make_pair(cell, I, H, *, num_layers=1, bidirectional=False, batch_first=False, proj_size=0,
              bias=True, dtype="float64", backend="numpy", seed=0):
    """A gpulstm module and a torch module with the same (torch-initialised) weights."""
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    tkw = dict(kw)
    if cell.startswith("rnn"):
        tkw["nonlinearity"] = kw_nl = cell.split("_")[1]
        ours = gl.RNN(I, H, **kw, nonlinearity=kw_nl, backend=backend, dtype=dtype)
    elif cell == "lstm":
        tkw["proj_size"] = proj_size
        ours = gl.LSTM(I, H, **kw, proj_size=proj_size, backend=backend, dtype=dtype)
    else:
        ours = gl.GRU(I, H, **kw, backend=backend, dtype=dtype)
    torch.manual_seed(seed)
    ref = TORCH_CLS[cell](I, H, dtype=getattr(torch, dtype), **tkw)
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    return ours, ref


def torch_run(ref, x, h0, c0, lengths, gy, gh, gc):
    """Forward + backward of the torch module; returns dict of numpy results.
    ``lengths`` uses pack_padded_sequence (enforce_sorted=False)."""
    bf = ref.batch_first
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    hx = h0t
    if c0 is not None:
        c0t = torch.tensor(c0, requires_grad=True)
        hx = (h0t, c0t)
    if lengths is not None:
        T = x.shape[1] if bf else x.shape[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), batch_first=bf,
                                                         enforce_sorted=False)
        yp, st = ref(packed, hx)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(yp, batch_first=bf, total_length=T)
    else:
        y, st = ref(xt, hx)
    hn, cn = st if c0 is not None else (st, None)
    loss = (y * torch.tensor(gy)).sum() + (hn * torch.tensor(gh)).sum()
    if cn is not None:
        loss = loss + (cn * torch.tensor(gc)).sum()
    loss.backward()
    out = {"y": y, "h_n": hn, "dx": xt.grad, "dh0": h0t.grad}
    if cn is not None:
        out.update(c_n=cn, dc0=c0t.grad)
    out = {k: v.detach().numpy() for k, v in out.items()}
    out["grads"] = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    return out


def ours_run(m, x, h0, c0, lengths, gy, gh, gc):
    to = m.ex.to_numpy
    if c0 is not None:
        y, (hn, cn) = m(x, (h0, c0), lengths=lengths)
        dx = m.backward(gy, gh, gc)
        out = {"y": y, "h_n": hn, "c_n": cn, "dx": dx, "dh0": m.grad_hx[0], "dc0": m.grad_hx[1]}
    else:
        y, hn = m(x, h0, lengths=lengths)
        dx = m.backward(gy, gh)
        out = {"y": y, "h_n": hn, "dx": dx, "dh0": m.grad_hx}
    out = {k: to(v) for k, v in out.items()}
    out["grads"] = {k: to(v) for k, v in m.grads.items()}
    return out


def random_problem(rng, m, T, B, lengths=None, dtype=np.float64):
    """Fresh random x, h0, c0 and upstream gradients for module m."""
    I, H = m.input_size, m.hidden_size
    Hs, LD = m.proj_size or H, m.num_layers * m.num_directions
    xs = (B, T, I) if m.batch_first else (T, B, I)
    ys = (B, T, m.num_directions * Hs) if m.batch_first else (T, B, m.num_directions * Hs)
    r = lambda *s: rng.standard_normal(s).astype(dtype)
    lstm = isinstance(m, gl.LSTM)
    return dict(x=r(*xs), h0=r(LD, B, Hs), c0=r(LD, B, H) if lstm else None, lengths=lengths,
                gy=r(*ys), gh=r(LD, B, Hs), gc=r(LD, B, H) if lstm else None)


def assert_close(ours, ref, rtol, where=""):
    """Every array in ``ref`` matches ``ours`` to ``rtol`` relative to the array's scale."""
    for k, v in ref.items():
        if k == "grads":
            assert set(v) == set(ours["grads"]), (set(v), set(ours["grads"]))
            assert_close(ours["grads"], v, rtol, where + "grads.")
            continue
        a = ours[k]
        assert a.shape == v.shape, f"{where}{k}: shape {a.shape} vs {v.shape}"
        scale = max(1.0, float(np.abs(v).max()))
        err = float(np.abs(a - v).max())
        assert err <= rtol * scale, f"{where}{k}: max error {err:.3g} > {rtol:g} * {scale:.3g}"

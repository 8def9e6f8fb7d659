"""bfloat16 on both faces: gpulstm.LSTM & co. with dtype="bfloat16" (bias initialisation
options, state_dict round trip) and gpulstm.torch's modules on bf16 tensors (no widening:
the arrays the engine sees are the tensors' own bits, outputs and gradients come back as bf16
tensors), within the documented bf16-vs-float32 bound (docs/design.md, "bfloat16")."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ml_dtypes")
import gpulstm  # noqa: E402
import gpulstm.torch as gt  # noqa: E402
from gpulstm import lowp  # noqa: E402

BOUND = 0.03  # max|bf16 - f32| / max|f32| of the smooth cells (tests/test_bf16.py)


def _rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name,kw", [("LSTM", {"num_layers": 2, "bidirectional": True}),
                                     ("GRU", {"batch_first": True}), ("CIFG", {})])
def test_torch_face_runs_bf16_tensors_within_the_bound(name, kw):
    torch.manual_seed(0)
    ref = getattr(gt, name)(6, 8, **kw)
    m = getattr(gt, name)(6, 8, **kw).to(torch.bfloat16)
    m.load_state_dict({k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()})
    ref.load_state_dict({k: v.float() for k, v in m.state_dict().items()})  # the same numbers
    x = torch.randn(30, 4, 6).to(torch.bfloat16)
    xb, xf = x.clone().requires_grad_(), x.float().requires_grad_()
    yb, yf = m(xb)[0], ref(xf)[0]
    assert yb.dtype == torch.bfloat16
    wts = torch.randn(yf.shape)
    (yb.float() * wts).sum().backward()
    (yf * wts).sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    assert _rel(yb, yf) <= BOUND and _rel(xb.grad, xf.grad) <= BOUND
    for pb, pf in zip(m.parameters(), ref.parameters()):
        assert pb.grad.dtype == torch.bfloat16 and _rel(pb.grad, pf.grad) <= BOUND


def test_bf16_tensors_cross_without_a_copy():
    from gpulstm.backends import get_backend
    from gpulstm.torch import _Bridge
    b = _Bridge(get_backend("cpu"), torch.device("cpu"))
    t = torch.randn(5, 3).to(torch.bfloat16)
    a = b.array(t)
    assert lowp.is_bf16(a.dtype) and a.ctypes.data == t.data_ptr()
    back = b.tensor(a)
    assert back.dtype == torch.bfloat16 and back.data_ptr() == t.data_ptr() and torch.equal(back, t)


def test_numpy_face_bf16_init_options_and_state_dict():
    m = gpulstm.LSTM(3, 4, dtype="bfloat16", forget_bias=2.0, backend="numpy", seed=1)
    b = m.state_dict()["bias_ih_l0"]
    assert lowp.is_bf16(b.dtype) and np.all(b[4:8].astype(np.float32) == 2.0)
    c = gpulstm.LSTM(3, 4, dtype="bfloat16", init="chrono", t_max=50, backend="cpu", seed=1)
    bi = c.state_dict()["bias_ih_l0"].astype(np.float32)
    assert np.all(bi[4:8] > 0) and np.array_equal(bi[:4], -bi[4:8])
    sd = {k: v.astype(np.float32) * 0.5 for k, v in m.state_dict().items()}
    m.load_state_dict(sd)  # float32 values round to bf16
    assert all(lowp.is_bf16(v.dtype) for v in m.state_dict().values())
    g = gpulstm.GRU(3, 4, dtype="bfloat16", update_bias=1.0, backend="cpu")
    y, h = g(np.ones((5, 2, 3), dtype=g.dtype))
    assert lowp.is_bf16(y.dtype) and lowp.is_bf16(h.dtype)


def test_bf16_refused_where_no_kernels_run():
    class NoBf16:
        name = "somewhere"
    with pytest.raises(ValueError, match="dtype='bfloat16' runs on the backends 'numpy', 'cpu', 'emulated'"):
        lowp.check_execution(NoBf16(), lowp.bfloat16())

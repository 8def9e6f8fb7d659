"""The cupy backend on a real GPU (``-m gpu``; each test skips with the reason without one):
kernels vs the NumPy reference, modules vs NumPy and vs cuDNN (torch.nn on CUDA, TF32 off),
DLPack interchange with torch, the out-of-memory message. One CPU test checks the behaviour
without a GPU: ``backend="cupy"`` raises BackendUnavailable with a reason, ``"auto"`` falls
back to numpy."""
import numpy as np
import pytest

import gpulstm as gl
from gpulstm.backends import BackendUnavailable, get_backend

from kernel_cases import FLAGS, KERNELS, MODULE_CASES, check_module, check_pointwise


def _cupy_backend():
    try:
        return get_backend("cupy"), None
    except BackendUnavailable as e:
        return None, str(e)


@pytest.fixture(scope="module")
def ex():
    ex, why = _cupy_backend()
    if ex is None:
        pytest.skip(f"backend 'cupy' unavailable: {why}")
    return ex


@pytest.fixture(scope="module")
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


# -- without a GPU (runs everywhere) -----------------------------------------------------------
def test_cupy_unavailable_without_gpu_and_auto_falls_back():
    ex, why = _cupy_backend()
    if ex is not None:
        pytest.skip("a GPU is usable here; this checks machines without one")
    with pytest.raises(BackendUnavailable) as info:
        gl.LSTM(2, 3, backend="cupy")
    msg = str(info.value)
    assert "cupy" in msg and any(s in msg for s in ("not installed", "CUDA device", "compile", "CuPy")), msg
    # without a GPU, auto is the compiled CPU execution where it builds, else numpy
    want = "cpu" if gl.available_backends()["cpu"] is None else "numpy"
    assert gl.LSTM(2, 3, backend="auto").backend == want
    assert gl.available_backends()["cupy"] == msg


# -- kernels and modules vs the NumPy reference ------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_pointwise_vs_numpy(ex, rng, kernel, dtype):
    cp = ex.xp
    for B, H in [(1, 37), (5, 37), (64, 1000)]:
        for flags in FLAGS.get(kernel, (0,)):
            check_pointwise(ex.pw, cp.asarray, cp.asnumpy, rng, kernel, B, H, dtype, flags)


@pytest.mark.gpu
@pytest.mark.parametrize("algo", ["stepwise", "fused", "persistent"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_module_vs_numpy(ex, rng, case, dtype, algo):
    check_module("cupy", case, dtype, rng, to_backend=ex.xp.asarray, algo=algo, poison=True)


@pytest.mark.gpu
def test_module_numpy_inputs_and_outputs_are_cupy(ex, rng):
    m = gl.GRU(4, 9, backend="cupy", dtype="float64")
    y, h = m(rng.standard_normal((3, 2, 4)))  # NumPy in: copied to the device
    assert isinstance(y, ex.xp.ndarray) and isinstance(h, ex.xp.ndarray)
    dx = m.backward(rng.standard_normal((3, 2, 9)))
    assert isinstance(dx, ex.xp.ndarray) and dx.shape == (3, 2, 4)


@pytest.mark.gpu
def test_kernels_compiled_once_per_device(ex):
    from gpulstm.backends.cupy import compiled_module
    assert compiled_module(ex.xp) is compiled_module(ex.xp)


@pytest.mark.gpu
def test_out_of_memory_message_states_bytes(ex):
    with pytest.raises(MemoryError, match="123456789 bytes"):
        with ex.memory_guard(123456789):
            ex.xp.empty(1 << 50, dtype=np.uint8)  # 1 PiB


# -- vs cuDNN through torch.nn on CUDA ----------------------------------------------------------
def _torch_cuda_run(torch, ref, p):
    """Forward + backward of the CUDA torch module on problem ``p``: dict of NumPy results."""
    dev = "cuda"
    t = lambda a: torch.tensor(a, device=dev, requires_grad=True)
    xt, h0t = t(p["x"]), t(p["h0"])
    hx = (h0t, t(p["c0"])) if p["c0"] is not None else h0t
    T = p["x"].shape[0]
    if p["lengths"] is not None:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(p["lengths"]), enforce_sorted=False)
        yp, st = ref(packed, hx)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(yp, total_length=T)
    else:
        y, st = ref(xt, hx)
    hn, cn = st if p["c0"] is not None else (st, None)
    g = lambda a: torch.tensor(a, device=dev)
    loss = (y * g(p["gy"])).sum() + (hn * g(p["gh"])).sum()
    if cn is not None:
        loss = loss + (cn * g(p["gc"])).sum()
    loss.backward()
    out = {"y": y, "h_n": hn, "dx": xt.grad, "dh0": h0t.grad}
    if cn is not None:
        out.update(c_n=cn, dc0=hx[1].grad)
    out = {k: v.detach().cpu().numpy() for k, v in out.items()}
    out["grads"] = {k: q.grad.cpu().numpy() for k, q in ref.named_parameters()}
    return out


TORCH_CASES = [  # (cell, num_layers, bidirectional, proj_size, lengths?)
    ("lstm", 2, True, 0, True),
    ("lstm", 1, False, 5, True),
    ("gru", 2, True, 0, True),
    ("rnn_tanh", 1, True, 0, True),
    ("rnn_relu", 2, False, 0, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: f"{c[0]}-L{c[1]}-bi{int(c[2])}-p{c[3]}")
def test_module_vs_cudnn(ex, torch_cuda, rng, case, dtype):
    from torch_ref import assert_close, make_pair, ours_run, random_problem
    cell, L, bi, proj, with_lengths = case
    T, B, I, H = 7, 4, 6, 37
    ours, ref = make_pair(cell, I, H, num_layers=L, bidirectional=bi, proj_size=proj,
                          dtype=dtype, backend="cupy")
    ref = ref.cuda()
    lengths = rng.integers(1, T + 1, size=B) if with_lengths else None
    if lengths is not None:
        lengths[0] = T
    p = random_problem(rng, ours, T, B, lengths, dtype=np.dtype(dtype))
    want = _torch_cuda_run(torch_cuda, ref, p)
    got = ours_run(ours, **p)
    assert_close(got, want, rtol=1e-4 if dtype == "float32" else 1e-10)


# -- DLPack / __cuda_array_interface__ interchange --------------------------------------------
@pytest.mark.gpu
def test_dlpack_round_trip_with_torch(ex, torch_cuda):
    torch = torch_cuda
    T, B, I, H = 5, 3, 4, 8
    x = torch.randn(T, B, I, device="cuda", dtype=torch.float32)
    xc = ex.from_user(x)
    assert xc.data.ptr == x.data_ptr(), "a CUDA tensor must be used without a copy"
    m = gl.LSTM(I, H, backend="cupy", seed=3)
    y, (h, c) = m(x)
    yt = torch.from_dlpack(y)
    assert yt.device.type == "cuda" and yt.data_ptr() == y.data.ptr
    ref = gl.LSTM(I, H, backend="numpy", seed=3)
    want, _ = ref(x.cpu().numpy())
    np.testing.assert_allclose(yt.cpu().numpy(), want, rtol=1e-5, atol=1e-6)
    dx = m.backward(torch.ones(T, B, H, device="cuda"))
    assert torch.from_dlpack(dx).shape == (T, B, I)

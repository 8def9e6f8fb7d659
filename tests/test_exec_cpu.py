"""The compiled CPU execution (backend "cpu", kernels/cpu/sequence.cpp) against the NumPy
reference: every cell and option through the public API (outputs, final states, dx, every
gradient, grad_hx) at hidden sizes that exercise every GEMM panel width and the scalar
remainder; the whole engine with NaN-poisoned buffers; thread counts; the inference path that
saves nothing; the vectorised exp/sigmoid/tanh."""
import numpy as np
import pytest

import gpulstm as gl
from gpulstm import engine
from gpulstm.backends.numpy_pointwise import sigmoid

from conftest import backend_or_skip
from kernel_cases import MODULE_CASES, RTOL, check_module


@pytest.fixture(scope="module")
def cpu():
    """The compiled CPU execution; skips with the reason when it cannot build here."""
    return backend_or_skip("cpu")


@pytest.fixture
def threads(cpu):
    """Restore the thread setting after a test that changes it."""
    from gpulstm.backends import cpu as mod
    old = mod.set_num_threads(0)
    mod.set_num_threads(old)
    yield mod
    mod.set_num_threads(old)


# H: 37 (odd: every GEMM falls to the scalar remainder columns), 32 (whole vectors),
# 70 (4H = 280: 4-, 2- and 1-vector panels plus a scalar tail)
@pytest.mark.parametrize("H", [37, 32, 70])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_module_vs_numpy(cpu, rng, case, dtype, H):
    check_module("cpu", case, dtype, rng, H=H)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("B", [1, 5, 9, 23])
def test_batch_row_blocks(cpu, rng, B, dtype):
    """Batch sizes around the 4-row GEMM tile, with lengths (rows ending at different steps)."""
    for case in [("lstm-peep", "LSTM", {"peephole": True, "bidirectional": True}, 6, B, True),
                 ("gru", "GRU", {"bidirectional": True}, 6, B, True),
                 ("rnn", "RNN", {"nonlinearity": "tanh"}, 6, B, True)]:
        check_module("cpu", case, dtype, rng, H=21)


@pytest.mark.parametrize("threads_n", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("T, B, H", [(37, 20, 64), (200, 3, 64)])
def test_chunked_input_projection(threads, rng, dtype, T, B, H, threads_n):
    """The LSTM forward projects the input a chunk of time steps at a time (T=37, B=20, H=64:
    chunks of 12 steps and a remainder of 1, per-step projections for a row block of two
    threads; T=200, B=3: chunks of 85 steps and a remainder of 30, the split over hidden
    units), both directions, with lengths, against the NumPy reference."""
    threads.set_num_threads(threads_n)
    case = ("lstm-bi", "LSTM", {"bidirectional": True, "num_layers": 2}, T, B, True)
    check_module("cpu", case, dtype, rng, I=9, H=H, poison=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False])
def test_unit_split_short_loop(threads, rng, dtype, bias):
    """The forward's split over hidden units on a loop too short for the row split to pack its
    weights (T*B = 120): each thread still packs its 4 gate slices (and bias row, when there
    is one) side by side; with lengths, against the NumPy reference."""
    threads.set_num_threads(2)
    case = ("lstm-units", "LSTM", {"bias": bias}, 20, 6, True)
    check_module("cpu", case, dtype, rng, I=9, H=64, poison=True)
    m = gl.LSTM(9, 64, bias=bias, backend="cpu", dtype=dtype).eval()
    m(rng.standard_normal((20, 6, 9)).astype(dtype))
    assert threads._library().last_threads() == 2  # the unit split (rows: 1 thread at B = 6)


class _PoisonXP:
    """NumPy, except that ``empty`` returns NaN-filled arrays: a buffer element the engine or
    an execution forgets to write stays NaN and shows in the results."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        return np.full(shape, np.nan, dtype)


def _engine_run(ex, m, x, h0, c0, lengths, dy, save=True):
    cell = m._make_cell()
    y, hn, cn, ctx = engine.forward(ex, cell, m._weights(), x, h0, c0, lengths, save=save)
    if not save:
        return [y, hn] + ([cn] if cn is not None else [])
    dx, dh0, dc0, grads = engine.backward(ex, ctx, dy)
    flat = [y, hn, dx, dh0] + ([cn, dc0] if cn is not None else [])
    for per_dir in grads:
        for gd in per_dir:
            flat += [v for _, v in sorted(gd.items()) if v is not None]
    return flat


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls,kw", [("LSTM", {}), ("LSTM", {"forget_gate": False, "peephole": True}),
                                    ("LSTM", {"proj_size": 4}), ("GRU", {}),
                                    ("RNN", {"nonlinearity": "relu"})],
                         ids=["lstm", "lstm-nofg-peep", "lstm-proj", "gru", "rnn-relu"])
@pytest.mark.parametrize("save", [True, False], ids=["train", "inference"])
def test_engine_with_poisoned_buffers(cpu, rng, cls, kw, dtype, save):
    """Every buffer the engine allocates starts as NaN (forward and backward, both directions,
    two layers, lengths): the compiled loops write every element the reference writes."""
    from gpulstm.backends.cpu import CpuExecution
    from gpulstm.backends.numpy import HostExecution
    from gpulstm.backends import numpy_pointwise
    T, B, I, H = 5, 6, 3, 9
    m = getattr(gl, cls)(I, H, num_layers=2, bidirectional=True, backend="numpy", dtype=dtype,
                         seed=3, **kw)
    Hs = kw.get("proj_size") or H
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((4, B, Hs)).astype(dtype)
    c0 = rng.standard_normal((4, B, H)).astype(dtype) if cls == "LSTM" else None
    lengths = np.array([5, 1, 3, 5, 2, 4], np.int32)
    dy = rng.standard_normal((T, B, 2 * Hs)).astype(dtype)
    poisoned = CpuExecution(cpu._lib)
    poisoned.xp = _PoisonXP()
    ref = HostExecution("numpy", numpy_pointwise)
    ref.xp = _PoisonXP()
    want = _engine_run(ref, m, x, h0, c0, lengths, dy, save)
    got = _engine_run(poisoned, m, x, h0, c0, lengths, dy, save)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert np.isfinite(w).all(), f"reference result {k} not finite"
        assert np.isfinite(g).all(), f"result {k}: {int((~np.isfinite(g)).sum())} elements never written"
        err = float(np.abs(g - w).max())
        assert err <= RTOL[dtype] * max(1.0, float(np.abs(w).max())), f"result {k}: error {err:.3g}"


@pytest.mark.parametrize("B, H", [(19, 96), (3, 96), (3, 70)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_thread_count_gives_identical_bits(threads, rng, dtype, B, H):
    """Batch rows never interact, so the row-block split changes no rounding, and the split
    of a few rows' forward over hidden units sums every GEMM element in the same order: 1, 2
    and 3 threads give the same bits (B=19: row blocks of unequal size, a partial 4-row tile,
    T*B*4H*H = 28e6 multiply-adds; B=3: the forward split over units, 96 = 3 x 2 vectors;
    H=70: a thread's units end inside a vector, so the packed columns of its 4 gate slices
    meet inside a GEMM panel)."""
    T = 40
    m = gl.LSTM(7, H, num_layers=2, bidirectional=True, backend="cpu", dtype=dtype, seed=2)
    x = rng.standard_normal((T, B, 7)).astype(dtype)
    dy = rng.standard_normal((T, B, 2 * H)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=B)
    results = []
    for n in (1, 2, 3):
        threads.set_num_threads(n)
        y, (h, c) = m(x, lengths=lengths)
        dx = m.backward(dy)
        # the split really ran n threads (B=3: the backward's row split runs one; the
        # forward's unit split is the last one with n)
        if B == 19:
            assert threads._library().last_threads() == n
        elif H % 16:  # 70 units: as many threads as have 2 vectors of units each (2-3)
            m.eval()
            m(x, lengths=lengths)
            got = threads._library().last_threads()
            assert (got == 1) if n == 1 else (2 <= got <= n), (n, got)
            m.train()
        else:
            m.eval()
            m(x, lengths=lengths)
            assert threads._library().last_threads() == n
            m.train()
        results.append([y, h, c, dx] + list(m.grads.values()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_small_calls_stay_single_threaded(threads, rng):
    """Below ~4e6 multiply-adds per thread a parallel region costs more than it saves."""
    threads.set_num_threads(2)
    m = gl.LSTM(16, 16, backend="cpu", dtype="float32")  # 100*32*64*16 = 3.3e6: one thread
    m(rng.standard_normal((100, 32, 16)).astype(np.float32))
    assert threads._library().last_threads() == 1
    m = gl.LSTM(32, 32, backend="cpu", dtype="float32")  # 100*32*128*32 = 13e6: two
    m(rng.standard_normal((100, 32, 32)).astype(np.float32))
    assert threads._library().last_threads() == 2


def test_set_num_threads_validates(threads):
    with pytest.raises(ValueError, match="num_threads must be an int >= 0"):
        threads.set_num_threads(-1)
    with pytest.raises(ValueError, match="num_threads must be an int >= 0"):
        threads.set_num_threads(1.5)
    threads.set_num_threads(2)
    assert threads.get_num_threads() == 2


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("cls,kw", [("LSTM", {"peephole": True}), ("LSTM", {"proj_size": 3}),
                                    ("GRU", {}), ("RNN", {})])
def test_inference_saves_nothing(cpu, rng, backend, cls, kw):
    """eval(): the same outputs and final states as a training forward, no saved history
    (no per-step gates), and backward() refuses with the reason."""
    m = getattr(gl, cls)(4, 6, num_layers=2, bidirectional=True, backend=backend,
                         dtype="float64", seed=1, **kw)
    x = rng.standard_normal((5, 3, 4))
    lengths = [5, 2, 4]
    y_train, s_train = m(x, lengths=lengths)
    m.eval()
    y_eval, s_eval = m(x, lengths=lengths)
    np.testing.assert_array_equal(y_eval, y_train)
    for a, b in zip(np.atleast_1d(s_eval) if cls != "LSTM" else s_eval,
                    np.atleast_1d(s_train) if cls != "LSTM" else s_train):
        np.testing.assert_array_equal(a, b)
    assert m._ctx.saved is None
    with pytest.raises(RuntimeError, match="eval"):
        m.backward(np.ones_like(y_eval))
    m.train()
    m(x, lengths=lengths)
    m.backward(np.ones_like(y_eval))  # a training forward can be differentiated again


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_vs_numpy(cpu, dtype):
    """The loops' polynomial exp, sigmoid and tanh: within a few ulps of NumPy's (tanh also
    in relative terms near 0), saturating in the tails, odd, NaN in -> NaN out."""
    from gpulstm.backends.cpu import activations
    eps = np.finfo(dtype).eps
    x = np.concatenate([np.linspace(-30, 30, 100001), np.geomspace(1e-8, 30, 2000),
                        -np.geomspace(1e-8, 30, 2000), [-1e4, -1000, -100, 100, 1000, 1e4]]).astype(dtype)
    e, s, t = activations(x)
    with np.errstate(over="ignore"):
        want_e = np.exp(x)
    normal = (np.abs(x) < 80)
    assert np.all(np.abs(e[normal] - want_e[normal]) <= 4 * eps * want_e[normal])
    np.testing.assert_allclose(s, sigmoid(x), rtol=0, atol=4 * eps)
    np.testing.assert_allclose(t, np.tanh(x), rtol=8 * eps, atol=0)
    assert np.all(np.abs(s[x >= 40] - 1) <= eps) and np.all(s[x <= -1000] < 1e-30)
    assert np.all(t[x >= 20] == 1) and np.all(t[x <= -20] == -1)
    # odd to the bit (float: evaluated on |x|, the sign put back), -0 stays -0
    np.testing.assert_array_equal(activations(-x)[2], -t)
    assert np.signbit(activations(np.array([-0.0], dtype))[2]).all()
    e, s, t = activations(np.array([np.nan], dtype))
    assert np.isnan(e).all() and np.isnan(s).all() and np.isnan(t).all()


def test_auto_prefers_cpu_without_gpu(cpu):
    if gl.available_backends()["cupy"] is None:
        pytest.skip("a GPU is usable here: auto picks cupy")
    assert gl.get_backend("auto").name == "cpu"
    assert gl.LSTM(2, 3).backend == "cpu"


def test_float64_close_to_torch(cpu, rng):
    """The compiled loops against torch.nn.LSTM directly (not only via the NumPy reference)."""
    torch = pytest.importorskip("torch")
    ref = torch.nn.LSTM(5, 32, num_layers=2, bidirectional=True).double()
    m = gl.LSTM(5, 32, num_layers=2, bidirectional=True, backend="cpu", dtype="float64")
    m.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((7, 4, 5))
    dy = rng.standard_normal((7, 4, 64))
    y, _ = m(x)
    dx = m.backward(dy)
    xt = torch.from_numpy(x).requires_grad_()
    yt, _ = ref(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=0, atol=1e-13)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=0, atol=1e-12)
    for k, p in ref.named_parameters():
        np.testing.assert_allclose(m.grads[k], p.grad.numpy(), rtol=0, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul(cpu, rng, dtype):
    """The execution's GEMM (input projection; the stepwise loop's GEMMs): every row-tile and
    column-panel size, k blocks (K > 512), row-strided views, NaN-poisoned output;
    matmul_acc adds."""
    tol = RTOL[dtype]
    # (150, 520, 37): more than 65536 elements of A, packed row block by row block
    for M, K, N in [(1, 1, 1), (7, 3, 5), (33, 300, 70), (64, 17, 129), (2, 40, 300), (9, 600, 16),
                    (150, 520, 37)]:
        a = rng.standard_normal((M, K + 2)).astype(dtype)[:, 1:K + 1]  # row stride K + 2
        b = rng.standard_normal((K, N)).astype(dtype)
        want = a.astype(np.float64) @ b.astype(np.float64)
        out = np.full((M, N), np.nan, dtype)
        cpu.matmul(a, b, out)
        scale = np.sqrt(K) * max(1.0, float(np.abs(want).max()))
        assert np.abs(out - want).max() <= tol * scale, (M, K, N)
        c = rng.standard_normal((M, N)).astype(dtype)
        acc = c.copy()
        cpu.matmul_acc(a, b, acc)
        assert np.abs(acc - (c + want)).max() <= tol * scale, (M, K, N)
    x = rng.standard_normal((4, 3))  # float64 @ float32: not the library's case, NumPy's
    out = np.empty((4, 2))
    cpu.matmul(x, rng.standard_normal((3, 2)).astype(np.float32), out)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_same_bits_for_every_thread_count(threads, rng, dtype):
    """The whole-sequence GEMMs (BLAS) give the same bits with 1, 2 and 3 threads: row blocks
    fixed by the shape, shared out by OpenMP, each a single-threaded BLAS call, K in blocks
    of 256. OpenBLAS's own pool broke this at these shapes (measured before the blocks:
    (120, 280, 140) float64 differs in 170 elements between 1 and 2 threads, its split of N;
    (384, 760, 96) with A transposed, float32 and float64, its split of K above GEMM_Q).
    Outputs NaN-poisoned; against a float64 product."""
    ex = threads.create()
    for M, K, N, ta in [(120, 280, 140, False), (384, 760, 96, True), (2000, 777, 130, True),
                        (3000, 300, 70, False)]:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
        a = a.T if ta else a
        b = rng.standard_normal((K, N)).astype(dtype)
        outs = []
        for n in (1, 2, 3):
            threads.set_num_threads(n)
            out = np.full((M, N), np.nan, dtype)
            ex.matmul(a, b, out)
            outs.append(out)
        for other in outs[1:]:
            np.testing.assert_array_equal(outs[0], other)
        want = a.astype(np.float64) @ b.astype(np.float64)
        assert np.abs(outs[0] - want).max() <= RTOL[dtype] * np.sqrt(K) * np.abs(want).max()


def test_weights_above_the_kept_scratch(threads, rng):
    """Packed weights of more than 16 MB go to a buffer of the call's own (the per-thread one
    keeps at most 16 MB between calls): an LSTM with H = 1100 (W_hh^T 1100 x 4400 floats,
    19 MB) against the reference, and a GEMM whose k block (512 x 8300 floats) is packed the
    same way."""
    threads.set_num_threads(1)
    case = ("lstm-wide", "LSTM", {}, 32, 4, True)  # T*B = 128: the loop packs its weights
    check_module("cpu", case, "float32", rng, I=3, H=1100, poison=True)
    M, K, N = 256, 600, 8300
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    out = np.full((M, N), np.nan, np.float32)
    threads.create().matmul(a, b, out)
    want = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(out - want).max() <= RTOL["float32"] * np.sqrt(K) * np.abs(want).max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_transposed_a_and_bias(cpu, rng, dtype):
    """The weight-gradient GEMMs read dG^T as stored (a column-major view of A), the input
    projection starts from the bias row: several row blocks (M > 128), k blocks (K > 512),
    panel remainders, NaN-poisoned outputs; transposed() is an exact transpose."""
    tol = RTOL[dtype]
    for M, K, N in [(300, 260, 48), (37, 600, 70), (129, 5, 17), (8, 1, 33)]:
        at = rng.standard_normal((K, M + 3)).astype(dtype)[:, 2:M + 2]  # row stride M + 3
        a = at.T  # [M, K], column-major
        b = rng.standard_normal((K, N)).astype(dtype)
        bias = rng.standard_normal(N).astype(dtype)
        want = a.astype(np.float64) @ b.astype(np.float64)
        scale = np.sqrt(K) * max(1.0, float(np.abs(want).max()))
        out = np.full((M, N), np.nan, dtype)
        cpu.matmul(a, b, out)
        assert np.abs(out - want).max() <= tol * scale, (M, K, N)
        out = np.full((M, N), np.nan, dtype)
        cpu.linear(np.ascontiguousarray(a), b, bias, out)
        assert np.abs(out - (want + bias)).max() <= tol * scale, (M, K, N)
        got = cpu.transposed(at)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, at.T)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_forked_child_runs(threads, rng):
    """After the parent ran OpenMP threads, a fork()ed child (multiprocessing's default on
    Linux) still runs the loops, single threaded, to the same bits (GNU OpenMP would hang)."""
    import os
    import time
    threads.set_num_threads(2)
    m = gl.LSTM(8, 64, backend="cpu", dtype="float32")  # 40*32*256*64 = 21e6 MACs: 2 threads
    x = rng.standard_normal((40, 32, 8)).astype(np.float32)
    y0 = m(x)[0]
    pid = os.fork()
    if pid == 0:  # child: exit status 0 when the result matches
        try:
            os._exit(0 if np.array_equal(m(x)[0], y0) else 3)
        finally:
            os._exit(4)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung in the compiled loops")


def test_data_pointers(cpu):
    """The pointers handed to the library: the buffer-protocol route gives what
    ``a.ctypes.data`` gives for C-contiguous views at an offset, read-only and empty arrays
    take ``a.ctypes``, and a strided view is refused."""
    from gpulstm.backends.cpu import _p
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    ro = np.arange(5.0)
    ro.flags.writeable = False
    for v in [a, a[1], a[2:], a[1, 2], a.reshape(20, 6)[3:7], ro, np.zeros(0, np.float32),
              np.arange(3, dtype=np.int32)]:
        assert _p(v) == v.ctypes.data, v.shape
    with pytest.raises(ValueError, match="C-contiguous"):
        _p(a[:, ::2])


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("cls,kw", [("LSTM", {"peephole": True}), ("LSTM", {"proj_size": 3}),
                                    ("GRU", {}), ("RNN", {})])
def test_inference_states_in_a_two_slot_ring(cpu, rng, backend, cls, kw):
    """An inference forward keeps its states in a ring of 2 slots ([2,B,*], not the [T+1,B,*]
    history; LSTM proj_size: one slot of m): the outputs and final states equal a training
    forward's to the bit for odd and even T (the final state ends in the other slot), both
    directions, with lengths."""
    ex = gl.get_backend(backend)
    m = getattr(gl, cls)(4, 6, backend=backend, dtype="float64", seed=1, **kw)
    cell, w = m._make_cell(), m._weights()[0][0]
    Hs = kw.get("proj_size") or 6
    for T in (6, 7):
        x = rng.standard_normal((T, 3, 4))
        h0 = rng.standard_normal((3, Hs))
        c0 = rng.standard_normal((3, 6)) if cls == "LSTM" else None
        L = np.array([T, 2, T - 1], np.int32)
        for reverse in (False, True):
            y_t, s_t = engine.direction_forward(ex, cell, w, x, h0, c0, L, reverse, save=True)
            y_i, s_i = engine.direction_forward(ex, cell, w, x, h0, c0, L, reverse, save=False)
            assert s_t["S"].shape[0] == T + 1 and s_i["S"].shape == (2, 3, Hs)
            if cls == "LSTM":
                assert s_i["C"].shape == (2, 3, 6)
            if kw.get("proj_size"):
                assert s_i["M"].strides[0] == 0
            np.testing.assert_array_equal(y_i, y_t)
            for a, b in zip(engine.final_states(cell, s_i), engine.final_states(cell, s_t)):
                if a is not None:
                    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("H", [37, 64])
def test_fused_step_gemm_same_bits(threads, rng, dtype, H):
    """Row blocks of whole register tiles (B = 2 RM, RM the library's tile rows: 8 with
    AVX-512, 6 otherwise) run one GEMM per step of [x_t | h_{t-1}] with the stacked weights;
    other row counts (B = 2 RM + 4) project the input a chunk of steps at a time and add the
    recurrent product after. Batch rows never interact, so the first 2 RM rows of the larger
    call must equal the smaller call bit for bit: both ways sum in the same order
    (H = 37: scalar tail columns; training and inference; reverse direction; lengths)."""
    threads.set_num_threads(1)
    from gpulstm.backends import cpu as cpu_backend
    rm = cpu_backend._library().tile_rows()
    Bf, Bc = 2 * rm, 2 * rm + 4
    assert Bf % rm == 0 and Bc % rm != 0
    m = gl.LSTM(11, H, bidirectional=True, backend="cpu", dtype=dtype, seed=4)
    x = rng.standard_normal((9, Bc, 11)).astype(dtype)
    lengths = rng.integers(1, 10, size=Bc)
    for train in (True, False):
        m.train(train)
        yc, (hc, cc) = m(x, lengths=lengths)
        yf, (hf, cf) = m(x[:, :Bf], lengths=lengths[:Bf])
        np.testing.assert_array_equal(yf, yc[:, :Bf])
        np.testing.assert_array_equal(hf, hc[:, :Bf])
        np.testing.assert_array_equal(cf, cc[:, :Bf])


def test_blas_pool_stays_single_threaded(threads, rng):
    """The whole-sequence GEMMs run single-threaded BLAS calls inside OpenMP's threads: a
    pool that threadpoolctl (or anyone) set to 2 threads is put back to 1 by the next GEMM
    (a 2-thread pool inside the parallel region would oversubscribe the cores), and the
    result has the bits of the undisturbed call."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    ex = threads.create()
    threads.set_num_threads(2)
    a = rng.standard_normal((3000, 300)).astype(np.float32)
    b = rng.standard_normal((300, 70)).astype(np.float32)
    want = np.full((3000, 70), np.nan, np.float32)
    ex.matmul(a, b, want)
    assert threads.blas_info()["threads"] == 1
    assert "OpenBLAS" in threads.blas_info()["config"]
    with threadpoolctl.threadpool_limits(2):
        threads._library().blas_set_num_threads(2)
        out = np.full((3000, 70), np.nan, np.float32)
        ex.matmul(a, b, out)
        assert threads.blas_info()["threads"] == 1
    np.testing.assert_array_equal(out, want)

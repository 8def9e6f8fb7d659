"""allow_tf32: one option for every cuBLAS GEMM of a module, checked without a GPU.

- the TF32 rounding the emulated execution imitates, bit by bit;
- the launch trace: every GEMM of a forward and backward carries the module's flag;
- the cupy execution's cublasGemmEx call (operand order, transposes, leading dimensions, beta,
  compute type) against a cuBLAS stand-in that reads the operands from their raw pointers the
  way cuBLAS does (column-major), so the row-major/column-major bookkeeping is tested here;
- modules: the option on every backend, changing it, pickling it.
"""
import ctypes
import pickle
from types import SimpleNamespace

import numpy as np
import pytest

import gpulstm as gl
from gpulstm.backends.options import tf32_round

from conftest import backend_or_skip


def _f32(bits):
    return np.array(bits, np.uint32).view(np.float32)


@pytest.mark.parametrize("x,want", [
    (1 + 2.0 ** -11, 1.0),  # a tie, kept mantissa even: down
    (1 + 3 * 2.0 ** -11, 1 + 2.0 ** -9),  # a tie, kept mantissa odd: up
    (1 + 2.0 ** -11 + 2.0 ** -20, 1 + 2.0 ** -10),  # above the tie: up
    (1 + 2.0 ** -12, 1.0),  # below: down
    (-(1 + 3 * 2.0 ** -11), -(1 + 2.0 ** -9)),  # the sign does not change the rounding
    (2.0 ** -130, 2.0 ** -130),  # a subnormal with few bits: exact
    (np.inf, np.inf), (-np.inf, -np.inf),
    (float(np.finfo(np.float32).max), np.inf),  # past the largest TF32 number
])
def test_tf32_round_known_values(x, want):
    got = tf32_round(np.array([x], np.float32))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([want], np.float32))


def test_tf32_round_random_values_keep_10_mantissa_bits_and_the_nearest_value():
    rng = np.random.default_rng()
    a = (rng.standard_normal(100_000) * np.exp(rng.uniform(-20, 20, 100_000))).astype(np.float32)
    r = tf32_round(a)
    assert not (r.view(np.uint32) & 0x1FFF).any(), "low 13 mantissa bits must be zero"
    err = np.abs(r.astype(np.float64) - a)
    ulp = np.spacing(np.abs(a)).astype(np.float64) * 2 ** 13  # one TF32 unit at a
    assert (err <= ulp / 2).all()
    assert (r != a).mean() > 0.99  # it does round
    nan = tf32_round(_f32([0x7FC00001, 0xFFC01234]))
    assert np.isnan(nan).all()
    d = rng.standard_normal(10)
    assert tf32_round(d) is not None and tf32_round(d).dtype == np.float64
    np.testing.assert_array_equal(tf32_round(d), d)


def test_emulated_gemms_round_their_inputs_to_tf32():
    ex = backend_or_skip("emulated")
    rng = np.random.default_rng()
    a = rng.standard_normal((37, 70)).astype(np.float32)
    b = rng.standard_normal((70, 45)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    rounded = tf32_round(a).astype(np.float64) @ tf32_round(b).astype(np.float64)
    for allow, want in ((False, exact), (True, rounded)):
        e = ex.with_tf32(allow)
        out = np.full((37, 45), np.nan, np.float32)
        e.matmul(a, b, out)
        np.testing.assert_allclose(out, want, rtol=0, atol=2e-5 * np.abs(want).max())
        acc = np.full((37, 45), 0.5, np.float32)
        e.matmul_acc(a, b, acc)
        np.testing.assert_allclose(acc, want + 0.5, rtol=0, atol=2e-5 * np.abs(want).max())
    assert np.abs(exact - rounded).max() > 1e-3  # the two are told apart above


@pytest.mark.parametrize("algo", ["stepwise", "fused", "persistent"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_launch_trace_every_gemm_carries_the_module_flag(algo, dtype):
    x = np.random.default_rng().standard_normal((6, 3, 5))
    for allow in (False, True):
        m = gl.LSTM(5, 8, num_layers=2, bidirectional=True, backend="numpy", dtype=dtype,
                    allow_tf32=allow)
        tr = gl.launch_trace(m, x, algo=algo)
        gemms = [c for c in tr.calls if c.kind == "gemm"]
        assert len(gemms) >= 2 * 2 * 4  # projection, dW_ih, dW_hh, dx per layer and direction
        assert {c.phase for c in gemms} == {"forward", "backward"}
        want = allow and dtype == "float32"
        assert all(c.tf32 == want for c in gemms), [c for c in gemms if c.tf32 != want]


def test_option_checked_changed_and_pickled():
    with pytest.raises(TypeError, match="allow_tf32 must be a bool"):
        gl.LSTM(3, 4, backend="numpy", allow_tf32="yes")
    m = gl.GRU(3, 4, backend="numpy", algo="auto")
    assert m.allow_tf32 is False
    shared = m.ex
    m.allow_tf32 = True
    assert m.allow_tf32 is True and m.ex.allow_tf32 is True
    assert shared.allow_tf32 is False  # other modules' execution untouched
    with pytest.raises(TypeError, match="allow_tf32 must be a bool"):
        m.allow_tf32 = 1
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.allow_tf32 is True and m2.ex.allow_tf32 is True


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_host_backends_compute_float32_whatever_the_flag(backend):
    backend_or_skip(backend)
    rng = np.random.default_rng()
    x = rng.standard_normal((7, 2, 5)).astype(np.float32)
    outs = []
    for allow in (False, True):
        m = gl.LSTM(5, 6, backend=backend, seed=3, allow_tf32=allow)
        y, _ = m(x)
        outs.append((y, m.backward(np.ones_like(y))))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_emulated_module_with_tf32_stays_close_to_float32_and_differs_from_it():
    backend_or_skip("emulated")
    rng = np.random.default_rng()
    x = rng.standard_normal((9, 4, 16)).astype(np.float32)
    res = {}
    for allow in (False, True):
        m = gl.LSTM(16, 32, backend="emulated", algo="stepwise", seed=5, allow_tf32=allow)
        y, _ = m(x)
        dx = m.backward(np.cos(np.asarray(y)))
        res[allow] = (np.asarray(y), np.asarray(dx), np.asarray(m.grads["weight_hh_l0"]))
    for a, b in zip(res[False], res[True]):
        diff = np.abs(a - b).max()
        assert 1e-6 < diff < 1e-2 * max(1.0, np.abs(a).max())


# -- the cupy execution's GEMM call, against a cuBLAS stand-in -------------------------------

class _DevArray(np.ndarray):
    """A host array that answers ``.data.ptr`` like a CuPy array."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.ctypes.data)


def _dev(a):
    return np.asarray(a).view(_DevArray)


class _FakeCublas:
    """cublasGemmEx's semantics (column-major, op(A) m x k, op(B) k x n, C m x n with leading
    dimensions) read from raw host pointers; records the compute types it was called with."""

    def __init__(self):
        self.computes, self.mode = [], 1

    def getPointerMode(self, handle):
        return self.mode

    def setPointerMode(self, handle, mode):
        self.mode = mode

    @staticmethod
    def _matrix(ptr, dtype, rows, cols, ld):
        item = np.dtype(dtype).itemsize
        n = (cols - 1) * ld + rows if rows and cols else 0
        buf = np.ctypeslib.as_array((ctypes.c_byte * (n * item)).from_address(ptr))
        return np.lib.stride_tricks.as_strided(buf.view(dtype), (rows, cols), (item, ld * item))

    def gemmEx(self, handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb,
               beta, C, Ctype, ldc, compute, algo):
        assert self.mode == 0, "host pointer mode expected for host scalars"
        dt = {0: np.float32, 1: np.float64}[Ctype]
        assert Atype == Btype == Ctype
        ab = np.ctypeslib.as_array((ctypes.c_byte * (2 * np.dtype(dt).itemsize)).from_address(alpha)).view(dt)
        assert beta == alpha + np.dtype(dt).itemsize
        a = self._matrix(A, dt, *((m, k) if transa == 0 else (k, m)), lda)
        b = self._matrix(B, dt, *((k, n) if transb == 0 else (n, k)), ldb)
        a = a if transa == 0 else a.T
        b = b if transb == 0 else b.T
        c = self._matrix(C, dt, m, n, ldc)
        assert ldc >= max(1, m) and lda >= max(1, a.shape[0] if transa == 0 else k)
        new = ab[0] * (a.astype(np.float64) @ b.astype(np.float64))
        if ab[1] != 0:
            new += ab[1] * c
        c[...] = new
        self.computes.append(compute)


def _fake_cupy_execution(allow_tf32):
    from gpulstm.backends.cupy import CupyExecution

    cp = SimpleNamespace(
        cuda=SimpleNamespace(device=SimpleNamespace(get_cublas_handle=lambda: 7),
                             memory=SimpleNamespace(OutOfMemoryError=MemoryError)),
        ascontiguousarray=lambda a: _dev(np.ascontiguousarray(a)),
        matmul=None)
    return CupyExecution(cp, cublas=_FakeCublas()).with_tf32(allow_tf32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_layout", ["C", "F", "sliced", "strided"])
@pytest.mark.parametrize("b_layout", ["C", "F"])
def test_cupy_gemm_ex_operands_and_leading_dimensions(dtype, a_layout, b_layout):
    rng = np.random.default_rng()
    M, K, N = 5, 7, 3

    def operand(layout, r, c):
        base = rng.standard_normal((r, c))
        if layout == "F":
            return _dev(np.ascontiguousarray(base.T).astype(dtype)).T  # a transposed view
        if layout == "sliced":  # rows of a wider buffer (a padded leading dimension)
            wide = _dev(rng.standard_normal((r, c + 4)).astype(dtype))
            wide[:, :c] = base
            return wide[:, :c]
        if layout == "strided":  # every other column: neither order, copied first
            wide = _dev(rng.standard_normal((r, 2 * c)).astype(dtype))
            wide[:, ::2] = base
            return wide[:, ::2]
        return _dev(base.astype(dtype))

    a, b = operand(a_layout, M, K), operand(b_layout, K, N)
    want = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    for allow in (False, True):
        ex = _fake_cupy_execution(allow)
        out = _dev(np.full((M, N), np.nan, dtype))
        ex.matmul(a, b, out)
        np.testing.assert_allclose(out, want, **tol)
        start = rng.standard_normal((M, N)).astype(dtype)
        acc = _dev(start.copy())
        ex.matmul_acc(a, b, acc)
        np.testing.assert_allclose(acc, want + start, **tol)
        bias = rng.standard_normal(N).astype(dtype)
        lin = _dev(np.full((M, N), np.nan, dtype))
        ex.linear(a, b, _dev(bias), lin)
        np.testing.assert_allclose(lin, want + bias, **tol)
        compute = 70 if dtype == np.float64 else (77 if allow else 68)
        assert ex._cublas.computes == [compute] * 3
        assert ex._cublas.mode == 1  # the handle's pointer mode restored


def test_torch_dropin_follows_torchs_matmul_tf32_flag():
    torch = pytest.importorskip("torch")
    import gpulstm.torch as gt

    m = gt.LSTM(3, 4)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        for flag in (True, False):
            torch.backends.cuda.matmul.allow_tf32 = flag
            assert m._execution(torch.device("cpu")).allow_tf32 is flag
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before

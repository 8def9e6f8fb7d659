"""Dropout masks from Philox4x32-10: the NumPy stream (gpulstm/backends/philox.py) against
published known answers and numpy.random.Philox, the kernel (kernels/dropout.cu) against the
NumPy stream bit for bit, and the masks through whole modules on every backend."""
import numpy as np
import pytest

import gpulstm as gl
from conftest import backend_or_skip
from gpulstm import engine
from gpulstm.backends import philox

# -- the generator ---------------------------------------------------------------------------
# Random123's kat_vectors, philox4x32 with 10 rounds: (counter, key, output)
KAT_4X32 = [
    ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
    ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
    ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
     (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
]


@pytest.mark.parametrize("counter,key,want", KAT_4X32)
def test_philox4x32_known_answers(counter, key, want):
    got = philox.philox4x32(np.array(counter, np.uint32), key)
    assert got.dtype == np.uint32
    assert [int(v) for v in got] == list(want)


def _philox_scalar(counter, key, bits, rounds=10):
    """Philox4xW-R on Python ints, written from the paper independently of philox.py: W = 32
    (Philox4x32, Random123's constants) or 64 (Philox4x64, which numpy.random.Philox is)."""
    if bits == 32:
        M, W = (0xD2511F53, 0xCD9E8D57), (0x9E3779B9, 0xBB67AE85)
    else:
        M, W = (0xD2E7470EE14C6C93, 0xCA5A826395121157), (0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B)
    mask = (1 << bits) - 1
    c, k = list(counter), list(key)
    for r in range(rounds):
        if r:
            k = [(k[0] + W[0]) & mask, (k[1] + W[1]) & mask]
        p0, p1 = M[0] * c[0], M[1] * c[2]
        c = [(p1 >> bits) ^ c[1] ^ k[0], p1 & mask, (p0 >> bits) ^ c[3] ^ k[1], p0 & mask]
    return c


@pytest.mark.parametrize("counter,key,want", KAT_4X32)
def test_scalar_reference_known_answers(counter, key, want):
    assert _philox_scalar(counter, key, 32) == list(want)


def test_round_structure_matches_numpy_philox(rng):
    """numpy.random.Philox is Philox4x64-10 (not 4x32): the scalar reference with 64-bit words
    reproduces it, which checks the round and key schedule that philox.py shares. NumPy
    increments the 256-bit counter before each block: its first 4 raw outputs are the block
    of counter + 1."""
    for _ in range(5):
        ctr = [int(v) for v in rng.integers(0, 2**63, size=4, dtype=np.uint64)]
        key = [int(v) for v in rng.integers(0, 2**63, size=2, dtype=np.uint64)]
        bg = np.random.Philox(counter=np.array(ctr, np.uint64), key=np.array(key, np.uint64))
        raw = [int(v) for v in bg.random_raw(8)]
        nxt = list(ctr)
        for block in range(2):
            nxt[0] += 1  # (no carry out of word 0 for these counters)
            assert raw[4 * block:4 * block + 4] == _philox_scalar(nxt, key, 64)


def test_vectorised_matches_scalar_reference(rng):
    ctr = rng.integers(0, 2**32, size=(64, 4), dtype=np.uint64).astype(np.uint32)
    key = [int(v) for v in rng.integers(0, 2**32, size=2, dtype=np.uint64)]
    got = philox.philox4x32(ctr, key)
    for c, g in zip(ctr, got):
        assert [int(v) for v in g] == _philox_scalar([int(v) for v in c], key, 32)


def test_stream_layout():
    """Block i of (seed, offset) is Philox of counter (b mod 2^32, b >> 32, 0, 0), b = offset + i
    mod 2^64, key (seed mod 2^32, seed >> 32); element 4 i + j is its word j."""
    seed, offset, n = 0x0123456789ABCDEF, 2**64 - 2, 13  # the counter wraps inside the mask
    u = philox.uint32_stream(n, seed, offset)
    assert u.dtype == np.uint32 and u.shape == (n,)
    for i in range(philox.blocks(n)):
        b = (offset + i) % 2**64
        want = _philox_scalar([b & 0xFFFFFFFF, b >> 32, 0, 0], [seed & 0xFFFFFFFF, seed >> 32], 32)
        assert [int(v) for v in u[4 * i:4 * i + 4]] == want[:len(u[4 * i:4 * i + 4])]
    # shifting the offset by one block drops the first 4 outputs
    np.testing.assert_array_equal(philox.uint32_stream(20, 7, 3)[4:], philox.uint32_stream(16, 7, 4))


def test_threshold_is_the_uniform_rule(rng):
    """(u >> 8) >= threshold(p) is exactly (u >> 8) * 2^-24 >= p."""
    u = np.concatenate([rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32),
                        np.array([0, 255, 256, 2**31, 2**32 - 1], np.uint32)])
    for p in (0.0, 0.1, 0.25, 0.3, 0.5, 1 / 3, 0.999, 2**-24, 1 - 2**-24, 1.0):
        uniform = (u >> 8).astype(np.float64) * 2.0**-24
        np.testing.assert_array_equal((u >> 8) >= philox.threshold(p), uniform >= p)
        assert np.array_equal(uniform.astype(np.float32).astype(np.float64), uniform)  # exact


# -- the kernel against the NumPy stream -----------------------------------------------------
CASES = [  # (n, seed, offset)
    (1, 0x5EED, 0),
    (2, 1, 7),
    (3, 2**64 - 1, 2**64 - 1),  # the counter wraps
    (7, 12345, 2**32 - 1),  # carry into the counter's second word
    (1001, 0xDEADBEEFCAFEF00D, 99),
    (4096 + 5, 42, 2**40 + 3),  # more than one thread block
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n,seed,offset", CASES)
@pytest.mark.parametrize("p", [0.3, 0.5, 0.9])
def test_emulated_kernel_matches_numpy_stream(emulated, dtype, n, seed, offset, p):
    mask = np.full(n, np.nan, dtype)  # poisoned: an unwritten element shows as NaN
    emulated.pw.dropout_mask(mask, p, seed, offset)
    want = philox.dropout_mask((n,), p, seed, offset, dtype)
    assert want.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(mask, want)  # NaN != anything: unwritten elements fail
    assert set(np.unique(want)) <= {0.0, np.dtype(dtype).type(1 / (1 - p))}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_execution_masks_are_identical(emulated, dtype):
    """ex.dropout_mask on numpy, cpu and emulated: the same array for any shape."""
    shape, p, seed, offset = (5, 3, 11), 0.3, 2024, 17
    want = backend_or_skip("numpy").dropout_mask(shape, p, seed, offset, dtype)
    got = emulated.dropout_mask(shape, p, seed, offset, dtype)
    assert got.shape == shape and got.dtype == np.dtype(dtype) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    try:
        cpu = backend_or_skip("cpu")
    except pytest.skip.Exception:
        return
    np.testing.assert_array_equal(cpu.dropout_mask(shape, p, seed, offset, dtype), want)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_p_zero_and_one(emulated, dtype):
    n = 4 * 257 + 3
    for ex in (backend_or_skip("numpy"), emulated):
        m0 = ex.dropout_mask((n,), 0.0, 5, 0, dtype)
        np.testing.assert_array_equal(m0, np.ones(n, dtype))  # p = 0 keeps all, scale 1
        m1 = ex.dropout_mask((n,), 1.0, 5, 0, dtype)
        np.testing.assert_array_equal(m1, np.zeros(n, dtype))  # p = 1 zeroes all (torch)
        assert not np.signbit(m1).any()


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.8])
def test_fraction_kept(p):
    n = 400_000
    for seed in (0, 1, 2**63 + 5):
        keep = philox.dropout_mask((n,), p, seed, 0, "float64") != 0
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs(keep.mean() - (1 - p)) < 6 * sigma, (p, seed, keep.mean())
        # no structure across the 4 words of a block
        per_word = keep.reshape(-1, 4).mean(axis=0)
        assert np.all(np.abs(per_word - (1 - p)) < 6 * np.sqrt(p * (1 - p) / (n / 4)))


def test_streams_are_distinct():
    a = philox.uint32_stream(4000, 1, 0)
    assert not np.array_equal(a, philox.uint32_stream(4000, 2, 0))  # another seed
    assert not np.array_equal(a, philox.uint32_stream(4000, 1, 1000))  # the next mask
    assert len(np.unique(a)) > 3990


# -- through modules -------------------------------------------------------------------------
def _run(backend, cls, dtype, x, gy, seed=3):
    m = getattr(gl, cls)(5, 7, num_layers=2, dropout=0.3, backend=backend, dtype=dtype, seed=seed)
    ex = m.ex
    out = {}
    for call in range(2):  # the second call draws fresh masks
        y, _ = m(ex.from_user(x))
        m.backward(ex.from_user(gy))
        out[f"y{call}"] = ex.to_numpy(y)
        out[f"mask{call}"] = ex.to_numpy(m._ctx.masks[0])
        out.update({f"grad{call}.{k}": ex.to_numpy(v) for k, v in m.grads.items()})
    return out


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_module_masks_and_grads_match_across_backends(cls, dtype, rng):
    x = rng.standard_normal((6, 4, 5)).astype(dtype)
    gy = rng.standard_normal((6, 4, 7)).astype(dtype)
    want = _run("numpy", cls, dtype, x, gy)
    # the masks are the Philox stream of the module's seed, offsets advancing per mask
    m = getattr(gl, cls)(5, 7, num_layers=2, dropout=0.3, backend="numpy", dtype=dtype, seed=3)
    seed, n = m._dropout_stream.seed, 6 * 4 * 7
    np.testing.assert_array_equal(want["mask0"], philox.dropout_mask((6, 4, 7), 0.3, seed, 0, dtype))
    np.testing.assert_array_equal(want["mask1"],
                                  philox.dropout_mask((6, 4, 7), 0.3, seed, philox.blocks(n), dtype))
    assert not np.array_equal(want["mask0"], want["mask1"])
    assert (want["mask0"] == 0).any() and (want["mask0"] != 0).any()
    rtol = {"float32": 1e-5, "float64": 1e-12}[dtype]
    tested = 0
    for backend in ("cpu", "emulated"):
        try:
            backend_or_skip(backend)
        except pytest.skip.Exception:
            continue
        got = _run(backend, cls, dtype, x, gy)
        tested += 1
        for k, w in want.items():
            if k.startswith("mask"):
                np.testing.assert_array_equal(got[k], w, err_msg=f"{backend} {k}")
            else:
                scale = max(1.0, float(np.abs(w).max()))
                assert np.isfinite(got[k]).all(), (backend, k)
                assert float(np.abs(got[k] - w).max()) <= rtol * scale, (backend, k)
    if not tested:
        pytest.skip("neither the cpu nor the emulated backend can run here")


def test_module_seed_reproduces_masks(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    a = gl.LSTM(5, 6, num_layers=3, dropout=0.4, backend="numpy", seed=8)
    b = gl.LSTM(5, 6, num_layers=3, dropout=0.4, backend="numpy", seed=8)
    c = gl.LSTM(5, 6, num_layers=3, dropout=0.4, backend="numpy", seed=9)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    assert len(a._ctx.masks) == 2 and not np.array_equal(a._ctx.masks[0], a._ctx.masks[1])
    assert a._dropout_stream.seed != c._dropout_stream.seed
    # after 2 masks of 4*3*6 elements per call: offset 2 * 18 blocks
    assert a._dropout_stream.offset == 2 * philox.blocks(4 * 3 * 6)


def test_engine_stream_take():
    s = engine.DropoutStream(2**64 + 3, offset=2**64 - 1)  # both reduced mod 2^64
    assert s.take(9) == (3, 2**64 - 1)
    assert s.offset == 2  # 3 blocks, wrapped
    assert s.take(1) == (3, 2) and s.offset == 3


def test_launch_trace_records_the_dropout_kernel():
    m = gl.GRU(4, 8, num_layers=3, dropout=0.2, backend="numpy")
    tr = gl.launch_trace(m, np.zeros((5, 2, 4), np.float32), algo="fused")
    calls = [c for c in tr.calls if c.name.startswith("dropout_mask")]
    assert [c.name for c in calls] == ["dropout_mask<float>"] * 2  # after layers 0 and 1
    n = 5 * 2 * 8
    assert all(c.kind == "kernel" and c.phase == "forward" and not c.in_loop for c in calls)
    assert calls[0].grid[0] * calls[0].block[0] >= philox.blocks(n)
    m.eval()
    tr = gl.launch_trace(m, np.zeros((5, 2, 4), np.float32), backward=False)
    assert not [c for c in tr.calls if c.name.startswith("dropout_mask")]


# -- CuPy ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cupy_kernel_matches_numpy_stream(dtype):
    ex = backend_or_skip("cupy")
    for n, seed, offset in CASES:
        mask = ex.xp.full(n, np.nan, dtype)
        ex.pw.dropout_mask(mask, 0.3, seed, offset)
        np.testing.assert_array_equal(ex.to_numpy(mask), philox.dropout_mask((n,), 0.3, seed, offset, dtype))
    x = np.random.default_rng(0).standard_normal((6, 4, 5)).astype(dtype)
    gy = np.random.default_rng(1).standard_normal((6, 4, 7)).astype(dtype)
    want, got = _run("numpy", "LSTM", dtype, x, gy), _run("cupy", "LSTM", dtype, x, gy)
    for k in ("mask0", "mask1"):
        np.testing.assert_array_equal(got[k], want[k])


def test_chunked_stream_matches_plain_rounds():
    """uint32_stream (chunked, in-place rounds) against philox4x32 of the explicit counters,
    across chunk boundaries and a counter that wraps in the middle."""
    n = 4 * philox.CHUNK * 2 + 9
    for seed, offset in ((7, 2**64 - philox.CHUNK - 3), (2**63 + 1, 2**32 - 5)):
        b = (np.arange(philox.blocks(n), dtype=np.uint64) + np.uint64(offset))
        ctr = np.stack([b & np.uint64(0xFFFFFFFF), b >> np.uint64(32),
                        np.zeros_like(b), np.zeros_like(b)], axis=-1)
        want = philox.philox4x32(ctr, (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)[:n]
        np.testing.assert_array_equal(philox.uint32_stream(n, seed, offset), want)

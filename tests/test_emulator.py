"""The CUDA-on-CPU runtime (gpulstm.emulator): kernels from tests/emulator_kernels/ run with
CuPy's calling convention and are compared with NumPy. Inputs are random and nonzero;
outputs start as NaN so an element no thread wrote shows up."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpulstm.emulator import EmulatedModule, EmulatorError
from gpulstm.emulator import _build

KERNELS = Path(__file__).parent / "emulator_kernels"
ELEMENTWISE = (KERNELS / "elementwise.cu").read_text()
BLOCK_SYNC = (KERNELS / "block_sync.cu").read_text()
TEMPLATES = [f"{k}<{t}>" for k in ("axpby_act", "add_bias_2d") for t in ("float", "double")]
SYNC_TEMPLATES = [f"{k}<{t}>" for k in ("block_reverse", "block_sum", "warp_block_sum")
                  for t in ("float", "double")]
CTYPE = {np.float32: "float", np.float64: "double"}
RTOL = {np.float32: 2e-6, np.float64: 1e-13}


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """A private compile cache for this file (the user's cache stays untouched)."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("emulated-cache")
        mp.setenv("GPULSTM_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def elementwise(cache_dir):
    return EmulatedModule(ELEMENTWISE, name_expressions=TEMPLATES)


@pytest.fixture(scope="module")
def block_sync(cache_dir):
    return EmulatedModule(BLOCK_SYNC, name_expressions=SYNC_TEMPLATES)


def rand(rng, shape, dtype=np.float32, low=0.1, high=2.0):
    """Random values of both signs, bounded away from zero."""
    mag = rng.uniform(low, high, size=shape)
    return (mag * rng.choice([-1.0, 1.0], size=shape)).astype(dtype)


def poisoned(shape, dtype=np.float32):
    return np.full(shape, np.nan, dtype=dtype)


# --- elementwise, indexing, math (sequential schedule) --------------------------------------

def test_schedule_is_chosen_from_the_source(elementwise, block_sync):
    assert not elementwise.fibers
    assert block_sync.fibers


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_templated_elementwise_matches_numpy(elementwise, dtype):
    rng = np.random.default_rng(1)
    n, block = 1000, 128  # n is not a multiple of the block
    x, y = rand(rng, n, dtype), rand(rng, n, dtype)
    a, b = dtype(rng.uniform(0.5, 2)), dtype(rng.uniform(-2, -0.5))
    out = poisoned(n + 7, dtype)  # the tail must stay untouched
    kernel = elementwise.get_function(f"axpby_act<{CTYPE[dtype]}>")
    kernel(((n + block - 1) // block,), (block,), (out, x, y, a, b, np.int32(n)))
    want = a / (1 + np.exp(-x)) + b * np.tanh(y)
    np.testing.assert_allclose(out[:n], want, rtol=RTOL[dtype], atol=RTOL[dtype])
    assert np.isnan(out[n:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_2d_grid_and_block(elementwise, dtype):
    rng = np.random.default_rng(2)
    rows, cols, bx, by = 37, 70, 16, 8
    x, bias = rand(rng, (rows, cols), dtype), rand(rng, cols, dtype)
    out = poisoned((rows, cols), dtype)
    grid = ((cols + bx - 1) // bx, (rows + by - 1) // by)
    elementwise.get_function(f"add_bias_2d<{CTYPE[dtype]}>")(
        grid, (bx, by), (out, x, bias, np.int32(rows), np.int32(cols)))
    np.testing.assert_array_equal(out, x + bias)


def test_index_variables_cover_a_3d_launch(elementwise):
    grid, block = (3, 2, 2), (4, 3, 2)
    nthreads = np.prod(grid) * np.prod(block)
    out = np.full((nthreads, 12), -1, dtype=np.int32)
    elementwise.get_function("thread_ids")(grid, block, (out,))
    bz, by, bx, tz, ty, tx = np.meshgrid(*(np.arange(d) for d in grid[::-1] + block[::-1]),
                                         indexing="ij")
    want = np.stack([tx, ty, tz, bx, by, bz], axis=-1).reshape(-1, 6)
    np.testing.assert_array_equal(out[:, :6], want)
    np.testing.assert_array_equal(out[:, 6:], np.tile(block + grid, (nthreads, 1)))


def test_math_functions_match_numpy(elementwise):
    rng = np.random.default_rng(3)
    n = 300
    x, y = rand(rng, n), rand(rng, n)
    out = poisoned((14, n))
    elementwise.get_function("math_float")((3,), (128,), (out, x, y, np.int32(n)))
    i = np.arange(n)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    x1, y1 = (np.abs(x) + 1).astype(np.float64), (np.abs(y) + 1).astype(np.float64)  # float32 sums
    want = [np.exp(x64), np.tanh(y64), np.log(x1), np.sqrt(np.abs(y64)),
            1 / np.sqrt(y1), np.exp(y64), x64 / y64, x64 * y64 + 1,
            np.copysign(x64, y64), np.maximum(x, y), np.minimum(x, y), np.abs(x64 - y64),
            np.exp(x64) * np.tanh(y64), np.minimum(i, 7) + np.maximum(3, i)]
    # float32 results: correctly rounded ops exact, libm functions within a few ulp
    np.testing.assert_allclose(out, np.array(want), rtol=4e-7, atol=0)


def test_atomic_add(elementwise):
    rng = np.random.default_rng(4)
    n, nbins = 2000, 7
    keys = rng.integers(0, nbins, size=n).astype(np.int32)
    w = rand(rng, n)
    bins, total = np.zeros(nbins, np.uint32), np.zeros(1, np.float32)
    elementwise.get_function("histogram")((16,), (128,), (bins, total, keys, w, np.int32(n)))
    np.testing.assert_array_equal(bins, np.bincount(keys, minlength=nbins))
    np.testing.assert_allclose(total[0], w.astype(np.float64).sum(), rtol=1e-4)


def test_every_scalar_type_reaches_the_kernel(elementwise):
    out = poisoned(7, np.float64)
    args = (out, np.int32(-7), np.int64(-2**40), np.uint32(2**31 + 5), np.uint64(2**50 + 3),
            np.float32(1.5), np.float64(-2.25), np.bool_(True))
    elementwise.get_function("all_types")((1,), (1,), args)
    np.testing.assert_array_equal(out, [-7, -2**40, 2**31 + 5, 2**50 + 3, 1.5, -2.25, 1])


# --- barriers, shared memory, warps (fiber schedule) -----------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_reverse_through_shared_memory(block_sync, dtype):
    rng = np.random.default_rng(5)
    block, nblocks = 256, 4
    n = block * nblocks
    x = rand(rng, n, dtype)
    out = poisoned(n, dtype)
    block_sync.get_function(f"block_reverse<{CTYPE[dtype]}>")(
        (nblocks,), (block,), (out, x, np.int32(n)))
    np.testing.assert_array_equal(out, x.reshape(nblocks, block)[:, ::-1].ravel())


def test_barrier_in_sequential_schedule_fails_loudly(cache_dir):
    module = EmulatedModule(BLOCK_SYNC, name_expressions=SYNC_TEMPLATES, schedule="sequential")
    x = rand(np.random.default_rng(6), 64)
    with pytest.raises(EmulatorError, match=r"__syncthreads\(\) reached in sequential mode"):
        module.get_function("block_reverse<float>")((1,), (64,), (poisoned(64), x, np.int32(64)))


@pytest.mark.parametrize("kernel", ["block_sum", "warp_block_sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_reductions(block_sync, kernel, dtype):
    rng = np.random.default_rng(7)
    block, n = 256, 1000  # last block partially filled
    nblocks = (n + block - 1) // block
    x = rand(rng, n, dtype)
    partial = poisoned(nblocks + 1, dtype)
    block_sync.get_function(f"{kernel}<{CTYPE[dtype]}>")((nblocks,), (block,),
                                                         (partial, x, np.int32(n)))
    want = np.add.reduceat(x.astype(np.float64), np.arange(0, n, block))
    np.testing.assert_allclose(partial[:nblocks], want, rtol=RTOL[dtype] * 20)
    assert np.isnan(partial[nblocks])


def test_shuffle_from_a_missing_lane_reads_poison(block_sync):
    # 200 threads: the last warp has 8 lanes, and its lane 0 reads lane 16 in the first
    # shuffle step. On a GPU that value is undefined; the emulator makes it NaN.
    x = rand(np.random.default_rng(8), 200)
    partial = np.zeros(1, np.float32)
    block_sync.get_function("warp_block_sum<float>")((1,), (200,), (partial, x, np.int32(200)))
    assert np.isnan(partial[0])


@pytest.mark.parametrize("width,delta", [(32, 3), (8, 1), (16, 5), (4, 2)])
def test_shuffle_semantics(block_sync, width, delta):
    rng = np.random.default_rng(9)
    n = 40  # warp 1 has only 8 lanes: reading lanes 8..31 of it gives NaN
    x = rand(rng, n)
    out = poisoned((5, n))
    block_sync.get_function("shuffles")((1,), (n,), (out, x, np.int32(width), np.int32(delta)))

    def read(src):
        return np.array([x[s] if s < n else np.nan for s in src], dtype=np.float32)

    t = np.arange(n)
    base, lane = t - t % 32, t % 32
    group, pos = lane & ~(width - 1), lane & (width - 1)
    src_xor = lane ^ delta
    src_xor = np.where(src_xor >= group + width, lane, src_xor)
    want = [read(base + group + (delta & (width - 1))),
            read(base + np.where(pos >= delta, lane - delta, lane)),
            read(base + np.where(pos + delta < width, lane + delta, lane)),
            read(base + src_xor)]
    for k in range(4):
        np.testing.assert_array_equal(out[k], want[k], err_msg=f"variant {k}")
    bits = np.array([sum(1 << (i - b) for i in range(b, min(b + 32, n)) if x[i] > 0)
                     for b in base], dtype=np.int64)
    np.testing.assert_array_equal(out[4], bits & 0xFFFF)


def test_votes_and_counting_barriers(block_sync):
    rng = np.random.default_rng(10)
    n = 72  # three warps, the last partial
    x = rand(rng, n)
    out = np.full((n, 6), -7, dtype=np.int32)
    block_sync.get_function("votes")((1,), (n,), (out, x))
    p = x > 0
    for t in range(n):
        w = p[t - t % 32: t - t % 32 + 32]
        ballot = sum(1 << i for i, v in enumerate(w) if v)
        assert out[t, 0] == np.int64(ballot).astype(np.uint32).astype(np.int32)
        assert tuple(out[t, 1:]) == (w.any(), w.all(), p.sum(), p.all(), p.any())


def test_dynamic_shared_memory(block_sync):
    rng = np.random.default_rng(11)
    block, n = 128, 300
    nblocks = (n + block - 1) // block
    x = rand(rng, n, np.float64)
    out = poisoned(n, np.float64)
    block_sync.get_function("dynamic_reverse")((nblocks,), (block,), (out, x, np.int32(n)),
                                               shared_mem=block * 8)
    padded = np.concatenate([x, -np.ones(nblocks * block - n)])
    np.testing.assert_array_equal(out, padded.reshape(nblocks, block)[:, ::-1].ravel()[:n])


def test_dynamic_shared_memory_starts_poisoned(block_sync):
    out = np.zeros(64, np.float32)
    block_sync.get_function("read_unwritten_shared")((2,), (64,), (out,), shared_mem=64 * 4)
    assert np.isnan(out).all()


def test_exited_threads_do_not_hold_the_barrier(block_sync):
    x = rand(np.random.default_rng(12), 50)
    out = poisoned(64)
    block_sync.get_function("early_exit")((1,), (64,), (out, x, np.int32(50)))
    np.testing.assert_array_equal(out[:50], x[::-1])
    assert np.isnan(out[50:]).all()


def test_deadlock_is_reported_and_the_module_recovers(block_sync):
    with pytest.raises(EmulatorError, match="deadlock"):
        block_sync.get_function("divergent_barrier")((1,), (32,), (poisoned(32),))
    x = rand(np.random.default_rng(14), 64)
    out = poisoned(64)
    block_sync.get_function("block_reverse<float>")((1,), (64,), (out, x, np.int32(64)))
    np.testing.assert_array_equal(out, x[::-1])


def test_portable_ucontext_scheduler(cache_dir):
    # The fallback for non-x86-64 hosts, forced here; NVRTC-only options are ignored.
    module = EmulatedModule(BLOCK_SYNC, name_expressions=["warp_block_sum<double>"],
                            options=("-DGPULSTM_EMU_UCONTEXT", "--use_fast_math",
                                     "-arch=sm_90", "--std=c++17"))
    x = rand(np.random.default_rng(13), 512, np.float64)
    partial = poisoned(2, np.float64)
    module.get_function("warp_block_sum<double>")((2,), (256,), (partial, x, np.int32(512)))
    np.testing.assert_allclose(partial, x.reshape(2, 256).sum(1), rtol=1e-13)


# --- argument checking -----------------------------------------------------------------------

def axpby(elementwise):
    return elementwise.get_function("axpby_act<float>")


def good_args(n=8):
    x = np.ones(n, np.float32)
    return [np.empty(n, np.float32), x, x, np.float32(1), np.float32(2), np.int32(n)]


def test_wrong_argument_count(elementwise):
    with pytest.raises(TypeError, match="takes 6 arguments.*got 5"):
        axpby(elementwise)((1,), (8,), tuple(good_args()[:5]))


def test_python_int_is_rejected(elementwise):
    args = good_args()
    args[5] = 8
    with pytest.raises(TypeError, match=r"argument 5 .*Python int.*np\.int32\(8\)"):
        axpby(elementwise)((1,), (8,), tuple(args))


def test_python_float_is_rejected(elementwise):
    args = good_args()
    args[3] = 1.0
    with pytest.raises(TypeError, match=r"argument 3 .*Python float"):
        axpby(elementwise)((1,), (8,), tuple(args))


def test_scalar_type_mismatch_names_index_and_types(elementwise):
    args = good_args()
    args[5] = np.int64(8)
    with pytest.raises(TypeError, match=r"argument 5 .*int32.*got int64"):
        axpby(elementwise)((1,), (8,), tuple(args))
    args = good_args()
    args[4] = np.float64(2)
    with pytest.raises(TypeError, match=r"argument 4 .*float32.*got float64"):
        axpby(elementwise)((1,), (8,), tuple(args))


def test_array_dtype_and_kind_mismatch(elementwise):
    args = good_args()
    args[1] = np.ones(8, np.float64)
    with pytest.raises(TypeError, match=r"argument 1 .*pointer to float32.*float64"):
        axpby(elementwise)((1,), (8,), tuple(args))
    args = good_args()
    args[3] = np.ones(1, np.float32)
    with pytest.raises(TypeError, match=r"argument 3 .*got an array"):
        axpby(elementwise)((1,), (8,), tuple(args))
    args = good_args()
    args[0] = np.float32(0)
    with pytest.raises(TypeError, match=r"argument 0 .*pointer to float32.*got float32"):
        axpby(elementwise)((1,), (8,), tuple(args))


def test_non_array_objects_are_rejected(elementwise):
    args = good_args()
    args[1] = [1.0] * 8
    with pytest.raises(TypeError, match=r"argument 1 .*got list"):
        axpby(elementwise)((1,), (8,), tuple(args))


@pytest.mark.parametrize("grid,block,error", [
    ((0,), (8,), ValueError), ((1,), (2048,), ValueError), ((1,), (32, 32, 2), ValueError),
    (1, (8,), TypeError), ((1, 1, 1, 1), (8,), TypeError), ((1.0,), (8,), TypeError)])
def test_bad_launch_shapes(elementwise, grid, block, error):
    with pytest.raises(error):
        axpby(elementwise)(grid, block, tuple(good_args()))


def test_unknown_kernel_name(elementwise):
    with pytest.raises(KeyError, match=r"axpby_act<int>.*available: axpby_act<float>"):
        elementwise.get_function("axpby_act<int>")
    with pytest.raises(EmulatorError):
        elementwise.get_function("nope")


def test_unsupported_option(cache_dir):
    with pytest.raises(EmulatorError, match="option '--frobnicate' is not supported"):
        EmulatedModule(ELEMENTWISE, options=("--frobnicate",))


# --- compilation and cache -------------------------------------------------------------------

def test_compile_error_shows_the_compiler_log(cache_dir):
    code = 'extern "C" __global__ void broken(float* y) {\n  y[0] = undefined_name;\n}\n'
    with pytest.raises(EmulatorError) as info:
        EmulatedModule(code)
    message = str(info.value)
    assert "kernel.cu:2" in message and "undefined_name" in message


def test_cache_reuse_and_rebuild_after_a_change(tmp_path, monkeypatch):
    monkeypatch.setenv("GPULSTM_CACHE_DIR", str(tmp_path))
    code = 'extern "C" __global__ void fill(float* y, float v) { y[threadIdx.x] = v; }\n'
    before = _build.compile_count
    first = EmulatedModule(code)
    assert _build.compile_count == before + 1
    (so,) = tmp_path.glob("emulated/*.so")
    stamp = so.stat().st_mtime_ns

    assert EmulatedModule(code)._lib is first._lib  # memoized in the process
    _build.clear_memo()
    again = EmulatedModule(code)                      # loaded from the disk cache
    assert _build.compile_count == before + 1 and so.stat().st_mtime_ns == stamp
    y = poisoned(4)
    again.get_function("fill")((1,), (4,), (y, np.float32(2.5)))
    np.testing.assert_array_equal(y, 2.5)

    changed = EmulatedModule(code.replace("= v;", "= 2 * v;"))  # source change: rebuild
    assert _build.compile_count == before + 2
    assert len(list(tmp_path.glob("emulated/*.so"))) == 2
    changed.get_function("fill")((1,), (4,), (y, np.float32(2.5)))
    np.testing.assert_array_equal(y, 5.0)
    assert not list(tmp_path.glob("emulated/.build-*"))  # temporary build dirs removed

"""The device time loop (gpulstm.backends.kernel_loop; kernels/fused_step.cu, persistent.cu) on
the emulated execution against the NumPy reference: every cell and option through the public
API with NaN-poisoned engine buffers, edge shapes around the kernels' tiles, both persistent
variants (weights resident in shared memory or read through L2), the algorithm option and the
launch trace."""
import numpy as np
import pytest

import gpulstm as gl
from gpulstm.backends import get_backend
from gpulstm.backends.kernel_loop import (PERSISTENT_UNITS, ROWS, THREADS, TILE, fused_launch_shape,
                                          persistent_plan, resident_ld)

from conftest import numpy_gemm_ex
from kernel_cases import MODULE_CASES, check_module


@pytest.mark.parametrize("algo", ["fused", "persistent"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_device_loop_module_vs_numpy(emulated, rng, case, dtype, algo):
    check_module("emulated", case, dtype, rng, algo=algo, poison=True)


# (id, class, kwargs, T, B, lengths?, H): H below, at and across the unit tile (32), B across
# the row tile (8), odd B, B = 1, T = 1
EDGE_CASES = [
    ("lstm-H70-B11", "LSTM", {}, 3, 11, True, 70),
    ("lstm-H32-B8-peep-noforget", "LSTM", {"peephole": True, "forget_gate": False}, 3, 8, True, 32),
    ("lstm-H1-B1-T1", "LSTM", {}, 1, 1, False, 1),
    ("gru-H33-B9-bidir", "GRU", {"bidirectional": True}, 4, 9, True, 33),
    ("gru-H5-B17-T1", "GRU", {}, 1, 17, False, 5),
    ("rnn-relu-H65-B3-2layer", "RNN", {"nonlinearity": "relu", "num_layers": 2}, 3, 3, True, 65),
    ("rnn-tanh-H31-B1-bidir", "RNN", {"bidirectional": True}, 4, 1, True, 31),
]


@pytest.mark.parametrize("algo", ["fused", "persistent"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_device_loop_edge_shapes(emulated, rng, case, dtype, algo):
    *case, H = case
    check_module("emulated", tuple(case), dtype, rng, H=H, algo=algo, poison=True)


class _Limits:
    """An execution wrapper reporting other device limits (SM count, shared bytes per block)."""

    def __init__(self, sm_count, smem):
        self.limits = (sm_count, smem)

    def __call__(self, case, dtype, rng, H):
        import gpulstm.backends.kernel_loop as kl
        orig = kl.KernelLoop.device_limits
        kl.KernelLoop.device_limits = lambda ex: self.limits
        try:
            check_module("emulated", case, dtype, rng, H=H, algo="persistent", poison=True)
        finally:
            kl.KernelLoop.device_limits = orig


@pytest.mark.parametrize("case", [c for c in EDGE_CASES if c[0] in (
    "lstm-H70-B11", "gru-H33-B9-bidir", "rnn-relu-H65-B3-2layer")], ids=lambda c: c[0])
def test_persistent_weights_through_L2(emulated, rng, case):
    """Shared memory too small for the weight slice: the persistent kernels read W_hh from
    global memory every step (resident = 0)."""
    *case, H = case
    assert not persistent_plan(11, H, 4, 8, smem_per_block=4096)["resident"]
    _Limits(132, 4096)(tuple(case), "float64", rng, H)


def test_persistent_falls_back_to_fused_when_the_grid_does_not_fit(emulated, rng):
    """More blocks than SMs: no co-residency, so algo="persistent" runs the fused kernels."""
    import gpulstm.backends.kernel_loop as kl
    assert persistent_plan(11, 70, 4, 8, sm_count=5) is None  # 3 x 2 blocks > 5 SMs
    orig = kl.KernelLoop.device_limits
    kl.KernelLoop.device_limits = lambda ex: (5, 227 * 1024)
    try:
        m = gl.LSTM(3, 70, backend="emulated", dtype="float64", algo="persistent")
        counts = _count_launches(m, np.random.default_rng(0).standard_normal((4, 11, 3)), None)
    finally:
        kl.KernelLoop.device_limits = orig
    assert counts == {"fused_forward<LstmCell>": 4, "fused_backward<LstmCell>": 4}


def test_long_sequences_leave_the_persistent_kernel(emulated):
    """T * 4 * B * H >= 2**31 would overflow the persistent kernels' int indices: fused."""
    from gpulstm.cells import LSTMCell
    ex = get_backend("emulated", "persistent")
    assert ex.loop_algo(LSTMCell(), 0, 1000, 8, 128, 4) == "persistent"
    assert ex.loop_algo(LSTMCell(), 0, 2**31 // (4 * 8 * 128), 8, 128, 4) == "fused"


def test_persistent_plan():
    """The smallest unit tile whose grid fits on the SMs; 256 threads per block at most."""
    p = persistent_plan(8, 128, 4, 4)  # 8 units: 16 blocks
    assert p["grid"] == (16, 1) and p["block"] == (8, 8, 4) and p["blocks"] == 16
    # forward W_hh^T[:, tile]: H rows of 4 x 8 gate columns padded to 5 x 8 (backward 4 H x 8)
    assert p["resident"] and p["shared"] == 128 * 5 * 8 * 4
    p = persistent_plan(8, 1024, 4, 4)  # 128 blocks of 8 units, 160 KiB slices
    assert p["grid"] == (128, 1) and p["resident"] and p["shared"] == 1024 * 5 * 8 * 4
    p = persistent_plan(8, 1024, 3, 4)  # GRU: 3 x 8 columns (odd) need no pad either way
    assert p["resident"] and p["shared"] == 1024 * 3 * 8 * 4
    p = persistent_plan(1, 2048, 4, 4)  # 8 units would need 256 blocks: 16 units
    assert p["grid"] == (128, 1) and p["block"] == (16, 1, 16)
    assert not p["resident"] and p["shared"] == 0  # a 512 KiB slice: read through L2
    assert persistent_plan(64, 1024, 4, 4) is None  # 32 x 8 blocks > 132 SMs
    for B in (1, 3, 8, 11, 32):
        for H in (1, 37, 300, 1024):
            p = persistent_plan(B, H, 4, 8)
            if p:
                x, y, z = p["block"]
                assert x * y * z <= 256 and y == min(8, B) and p["grid"][0] * x >= H


def _warp_conflicts(ld, units, itemsize, warp=0, c0=0):
    """Worst bank conflict (distinct words one bank serves) of one load of fused_row_product
    on the resident copy with rows of ``ld`` elements: lane lin = x + U s of a warp reads row
    c0 + s, column x (kernels/fused_step.cu). 32 banks of 4 bytes; 8-byte loads run in two
    half-warps, each a separate wavefront."""
    lanes = [warp * 32 + i for i in range(32)]
    phases = [lanes] if itemsize <= 4 else [lanes[:16], lanes[16:]]
    worst = 1
    for phase in phases:
        banks = {}
        for lin in phase:
            x, s = lin % units, lin // units
            addr = ((c0 + s) * ld + x) * itemsize
            for word in range(addr // 4, (addr + itemsize) // 4):
                banks.setdefault(word % 32, set()).add(word)
        worst = max(worst, max(len(w) for w in banks.values()))
    return worst


@pytest.mark.parametrize("itemsize", [4, 8])
def test_resident_weight_rows_are_free_of_bank_conflicts(itemsize):
    """The resident rows (resident_ld: an odd multiple of U) give every warp's load of the
    recurrent product distinct banks, for every cell (G = 4, 3, 1; backward G = 1) and unit
    tile; the former pad of one element (G U + 1) gave 4-way conflicts at U = 8."""
    for units in PERSISTENT_UNITS:
        for gates in (4, 3, 1):
            ld = resident_ld(gates, units)
            assert ld >= gates * units and ld % units == 0
            for warp in range(THREADS // 32):
                for c0 in (0, 5):
                    assert _warp_conflicts(ld, units, itemsize, warp, c0) == 1, (units, gates)
    assert _warp_conflicts(4 * 8 + 1, 8, 4) == 4  # the old padding, LSTM forward at U = 8
    assert _warp_conflicts(4 * 8, 8, 4) == 4  # no padding at all: as bad


def test_launch_shape_covers_every_element():
    for B in (1, 3, 8, 9, 64):
        for H in (1, 31, 32, 33, 512):
            (gx, gy), (bx, by) = fused_launch_shape(B, H)
            assert bx == TILE and 1 <= by <= ROWS
            assert gx * bx >= H > (gx - 1) * bx and gy * by >= B > (gy - 1) * by


def _count_launches(m, x, name):
    """Launches of kernel ``name`` (any dtype) during a forward and backward of ``m``."""
    pw = m.ex.pw
    counts = {}
    orig = pw.kernel

    def counting(kname, dtype, cell=None):
        k = orig(kname, dtype, cell)
        label = kname if cell is None else f"{kname}<{cell}>"

        def launch(*a, **kw):
            counts[label] = counts.get(label, 0) + 1
            return k(*a, **kw)
        return launch
    pw.kernel = counting
    try:
        y, _ = m(x)
        m.backward(np.ones_like(y))
    finally:
        del pw.kernel
    return counts


@pytest.mark.parametrize("algo, want", [("fused", {"fused_forward<LstmCell>": 6, "fused_backward<LstmCell>": 6}),
                                        ("stepwise", {"lstm_forward": 6, "lstm_backward": 6}),
                                        ("persistent", {"persistent_forward<LstmCell>": 1,
                                                        "persistent_backward<LstmCell>": 1}),
                                        ("auto", {"persistent_forward<LstmCell>": 1,
                                                  "persistent_backward<LstmCell>": 1})])
def test_algo_selects_the_loop(emulated, algo, want):
    m = gl.LSTM(3, 5, backend="emulated", dtype="float64", algo=algo)
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    assert _count_launches(m, x, None) == want


def test_proj_size_runs_stepwise(emulated):
    m = gl.LSTM(3, 5, proj_size=2, backend="emulated", dtype="float64", algo="fused")
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    counts = _count_launches(m, x, None)
    assert "fused_forward<LstmCell>" not in counts and counts["lstm_forward"] == 4


def test_algo_is_checked():
    with pytest.raises(ValueError, match="unknown algo 'fast'"):
        gl.LSTM(3, 5, backend="numpy", algo="fast")
    with pytest.raises(TypeError, match="algo must be a str"):
        gl.GRU(3, 5, backend="numpy", algo=1)
    with pytest.raises(ValueError, match="needs a backend with a choice of time loops"):
        gl.RNN(3, 5, backend="numpy", algo="fused")
    assert gl.LSTM(3, 5, backend="numpy", algo="stepwise").algo == "stepwise"


def test_with_algo_shares_the_execution(emulated):
    fused = get_backend("emulated", "fused")
    assert fused.algo == "fused" and fused.pw is emulated.pw
    assert get_backend("emulated").algo == "auto"


# -- launch trace -----------------------------------------------------------------------------

def test_launch_trace_fused_lstm_T100():
    """Fused LSTM, T=100: at most one kernel launch per step and direction, no cuBLAS call
    inside the loop; the stepwise loop issues one GEMM per step in each phase."""
    m = gl.LSTM(16, 96, backend="numpy")
    x = np.zeros((100, 5, 16), np.float32)
    tr = gl.launch_trace(m, x, algo="fused")
    for phase in ("forward", "backward"):
        assert tr.count(phase=phase, kind="kernel", in_loop=True) <= 100
        assert tr.count(phase=phase, kind="gemm", in_loop=True) == 0
        assert tr.count(phase=phase, kind="op", in_loop=True) == 0
    names = {c.name for c in tr.calls if c.kind == "kernel"}
    assert names == {"fused_forward<LstmCell, float>", "fused_backward<LstmCell, float>"}
    st = gl.launch_trace(m, x, algo="stepwise")
    for phase in ("forward", "backward"):
        assert st.count(phase=phase, kind="gemm", in_loop=True) == 100
        assert st.count(phase=phase, kind="kernel", in_loop=True) == 100
    # GEMMs outside the loop do not depend on T
    tr2 = gl.launch_trace(m, x[:7], algo="fused")
    assert tr2.count(kind="gemm") == tr.count(kind="gemm") > 0
    assert "per step" in str(tr)


def test_launch_trace_persistent_count_does_not_depend_on_T():
    m = gl.GRU(16, 96, bidirectional=True, backend="numpy")
    counts = []
    for T in (1, 100, 1000):
        tr = gl.launch_trace(m, np.zeros((T, 5, 16), np.float32), algo="persistent")
        assert tr.count(in_loop=True) == 0
        counts.append(len(tr.calls))
        coop = [c for c in tr.calls if c.kind == "kernel"]
        assert len(coop) == 4 and all(c.cooperative for c in coop)
        assert {c.name for c in coop} == {"persistent_forward<GruCell, float>", "persistent_backward<GruCell, float>"}
    assert counts[0] == counts[1] == counts[2]


@pytest.mark.parametrize("cls, kw", [("LSTM", {"peephole": True}), ("LSTM", {"proj_size": 3}),
                                     ("GRU", {"bidirectional": True, "num_layers": 2}),
                                     ("RNN", {"nonlinearity": "relu"})])
@pytest.mark.parametrize("algo", ["fused", "stepwise"])
def test_launch_trace_matches_emulated_launches(emulated, cls, kw, algo):
    """The trace lists exactly the kernel launches (name, grid, block, shared bytes) the
    emulated execution -- the same launch code as cupy -- makes."""
    m = getattr(gl, cls)(4, 40, **kw, backend="emulated", dtype="float64", algo=algo)
    x = np.random.default_rng(1).standard_normal((3, 11, 4))
    launched = []
    pw = m.ex.pw
    orig = pw._get_function

    def recording(name):
        k = orig(name)

        def launch(grid, block, args, shared_mem=0):
            launched.append((name, tuple(grid) + (1,) * (3 - len(grid)),
                             tuple(block) + (1,) * (3 - len(block)), shared_mem))
            return k(grid, block, args, shared_mem=shared_mem)
        return launch
    pw._get_function, saved = recording, dict(pw._kernels)
    pw._kernels.clear()
    try:
        y = m(x)[0]
        m.backward(np.ones_like(y))
    finally:
        pw._get_function = orig
        pw._kernels.clear()
        pw._kernels.update(saved)
    tr = gl.launch_trace(m, x)
    traced = [(c.name, c.grid, c.block, c.shared_mem) for c in tr.calls if c.kind == "kernel"]
    assert traced == launched and len(launched) > 0


def test_launch_trace_leaves_the_module_alone():
    m = gl.GRU(3, 5, backend="numpy", dtype="float64")
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    y0 = m(x)[0]
    ctx = m._ctx
    gl.launch_trace(m, np.zeros((9, 3, 3)))
    assert m._ctx is ctx and np.array_equal(m(x)[0], y0)
    with pytest.raises(ValueError, match="3 dimensions"):
        gl.launch_trace(m, np.zeros((9, 3)))


def test_launch_trace_doctest():
    import doctest
    import gpulstm.tracing as lt
    assert doctest.testmod(lt).failed == 0


# -- the cupy execution's launch glue, on the CPU -----------------------------------------------

class _FakeCupy:
    """Just enough of CuPy for CupyExecution, on NumPy arrays; RawModule kernels are the
    emulated ones, launched cooperatively when the module was built with
    enable_cooperative_groups, and refusing dynamic shared memory over 48 KiB less the static part unless the
    kernel's max_dynamic_shared_size_bytes was raised (as CUDA does)."""

    def __init__(self, emulated_module):
        import types
        self._emu = emulated_module
        self.launches = []
        fake = self

        class RawModule:
            def __init__(self, code, options, name_expressions, enable_cooperative_groups=False):
                self.coop = enable_cooperative_groups

            def compile(self):
                pass

            def get_function(self, name):
                return _FakeKernel(fake, fake._emu.get_function(name), self.coop)

        class Device:
            attributes = {"MultiProcessorCount": 132, "MaxSharedMemoryPerBlockOptin": 227 * 1024}

            def __init__(self, dev=0):
                pass

            def __enter__(self):
                return self

            def __exit__(self, *a):
                return False

        def gemm(ta, tb, a, b, out, alpha, beta):
            out[...] = alpha * (a @ b) + beta * out

        self.RawModule = RawModule
        self.ndarray = np.ndarray
        self.asnumpy = np.asarray
        self.cublas = types.SimpleNamespace(gemm=gemm)
        self.cuda = types.SimpleNamespace(
            memory=types.SimpleNamespace(OutOfMemoryError=MemoryError),
            runtime=types.SimpleNamespace(getDevice=lambda: 0), Device=Device)

    def __getattr__(self, name):
        return getattr(np, name)


class _FakeKernel:
    def __init__(self, fake, kernel, coop):
        self.fake, self.kernel, self.coop = fake, kernel, coop
        # CUDA's default dynamic limit: 48 KiB minus the static shared memory (FusedShared<T>)
        from gpulstm.backends import kernel_loop as kl
        itemsize = 8 if kernel.name.endswith("<double>") else 4
        self.max_dynamic_shared_size_bytes = 48 * 1024 - (kl.ROWS * (kl.TILE + 1) + 4 * kl.THREADS) * itemsize

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise RuntimeError("CUDA_ERROR_INVALID_VALUE: shared memory above the kernel's limit")
        self.fake.launches.append((self.kernel.name, self.coop, shared_mem))
        self.kernel(grid, block, args, shared_mem=shared_mem, cooperative=self.coop)


@pytest.mark.parametrize("cls, kw, H, algo", [("LSTM", {"peephole": True}, 400, "persistent"),
                                              ("LSTM", {}, 300, "persistent"),
                                              ("GRU", {"bidirectional": True}, 40, "fused"),
                                              ("RNN", {"nonlinearity": "relu"}, 40, "auto")])
def test_cupy_execution_launch_glue_on_the_cpu(emulated, monkeypatch, rng, cls, kw, H, algo):
    """CupyExecution's kernel launcher (device cache, cooperative module, shared-memory opt-in)
    drives the real kernels through a fake CuPy and matches the NumPy reference."""
    from gpulstm.backends import cupy as cupy_backend
    from gpulstm.emulator import EmulatedModule
    from gpulstm.kernel_source import kernel_source
    src = kernel_source()
    fake = _FakeCupy(EmulatedModule(code=src.code, name_expressions=list(src.name_expressions)))
    monkeypatch.setattr(cupy_backend, "_modules", cupy_backend._modules.fresh())
    monkeypatch.setattr(cupy_backend, "_limits", cupy_backend._limits.fresh())
    ex = cupy_backend.CupyExecution(fake, cublas=object()).with_algo(algo)
    ex._gemm_ex = numpy_gemm_ex
    ref = getattr(gl, cls)(5, H, **kw, backend="numpy", dtype="float32", seed=3)
    m = getattr(gl, cls)(5, H, **kw, backend="numpy", dtype="float32", seed=3)
    object.__setattr__(m, "ex", ex)  # past the fixed-attribute guard
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    gy = rng.standard_normal((4, 3, m.num_directions * H)).astype(np.float32)
    got, want = m(x)[0], ref(x)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(m.backward(gy), ref.backward(gy), rtol=0, atol=1e-5)
    for k in ref.grads:
        np.testing.assert_allclose(m.grads[k], ref.grads[k], rtol=0, atol=1e-4 * max(1, np.abs(ref.grads[k]).max()))
    names = {n for n, _, _ in fake.launches}
    if algo == "fused":
        assert names == {"fused_forward<GruCell, float>", "fused_backward<GruCell, float>"}
    else:
        struct = {"LSTM": "LstmCell", "GRU": "GruCell", "RNN": "RnnCell"}[cls]
        assert names == {f"persistent_forward<{struct}, float>",
                         f"persistent_backward<{struct}, float>"}
        assert all(coop for _, coop, _ in fake.launches)
    if H == 400:  # the resident weight slice (8 units) needs the > 48 KiB opt-in
        assert max(s for _, _, s in fake.launches) == 400 * 5 * 8 * 4 > 48 * 1024
    if H == 300:  # under 48 KiB dynamic, over it with the static FusedShared: opt-in too
        assert max(s for _, _, s in fake.launches) == 300 * 5 * 8 * 4 <= 48 * 1024


def test_tile_constants_match_the_kernels():
    import re
    from gpulstm.backends import kernel_loop as kl
    from gpulstm.kernel_source import kernel_dir
    text = (kernel_dir() / "fused_step.cu").read_text()
    found = {k: int(v) for k, v in re.findall(r"^#define FUSED_(TILE|ROWS|THREADS) (\d+)", text, re.M)}
    assert found == {"TILE": kl.TILE, "ROWS": kl.ROWS, "THREADS": kl.THREADS}


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_device_loop_parity_with_torch(emulated, rng, cell):
    """Against torch.nn directly (float64, outputs, final states, every gradient), both device
    algorithms: two bidirectional layers and unsorted variable lengths. (Slow: torch's
    variable-length path; the default suite checks the same against the NumPy reference,
    which test_parity_torch checks against torch.)"""
    pytest.importorskip("torch")
    from torch_ref import assert_close, make_pair, ours_run, random_problem, torch_run
    m, ref = make_pair(cell, 4, 37, num_layers=2, bidirectional=True, backend="emulated")
    T, B = 12, 6
    p = random_problem(rng, m, T, B, lengths=rng.permutation([T, 1, 4, 7, 2, T - 1]))
    want = torch_run(ref, **p)
    for algo in ("fused", "persistent"):
        object.__setattr__(m, "ex", get_backend("emulated", algo))  # past the fixed-attribute guard
        assert_close(ours_run(m, **p), want, 1e-12, where=algo)


@pytest.mark.parametrize("algo", ["fused", "persistent", "auto"])
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_inference_forward_matches(emulated, rng, cls, algo):
    """eval() forwards (one gate slot for all steps) run the device loop (persistent falls back
    to fused there) and give the training forward's outputs."""
    m = getattr(gl, cls)(4, 37, num_layers=2, bidirectional=True, backend="emulated",
                         dtype="float64", algo=algo, seed=2)
    x = rng.standard_normal((5, 3, 4))
    want = m(x)[0]
    m.eval()
    np.testing.assert_allclose(m(x)[0], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", ["_fused", "_persistent"])
def test_weight_index_width_is_refused_clearly(emulated, kernel):
    """4 H^2 must stay under 2**31 (the kernels' int weight index): H = 23171 is refused with
    an error naming the limit, before anything is allocated; H = 23170 passes the check;
    algo="auto" runs such an H stepwise."""
    from gpulstm.backends.kernel_loop import _check_int_index
    from gpulstm.cells import LSTMCell
    ex = get_backend("emulated", "fused")
    with pytest.raises(ValueError, match=r"4 \* H \* H must be < 2\*\*31"):
        getattr(ex, kernel)(LSTMCell(), kernel.strip("_") + "_forward", np.float32, 1, 23171)
    _check_int_index("k", 1, 23170)
    auto = get_backend("emulated")
    assert auto.loop_algo(LSTMCell(), 0, 2, 1, 23171, 4) == "stepwise"
    assert auto.loop_algo(LSTMCell(), 0, 2, 1, 23170, 4) != "stepwise"


# -- the occupancy guard of the persistent launch ----------------------------------------------
def _fwd_bwd(m, x, gy):
    """y, the final states, dx and every gradient of a forward + backward, as NumPy arrays."""
    y, hn = m(x)
    states = list(hn) if isinstance(hn, tuple) else [hn]
    dx = m.backward(gy)
    return [np.asarray(m.ex.to_numpy(a)) for a in [y, *states, dx]] + [
        np.asarray(m.ex.to_numpy(m.grads[k])) for k in sorted(m.grads)]


@pytest.mark.parametrize("algo", ["persistent", "auto"])
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_simulated_occupancy_limit_falls_back_to_fused(emulated, rng, cls, algo):
    """A device whose SMs hold no persistent block (simulated shared memory per SM under one
    block's) runs the fused kernels: the same numbers bit for bit as algo="fused", the
    fallback reported through the hook; with room for the blocks the persistent ones run."""
    x = rng.standard_normal((5, 3, 4))
    gy = rng.standard_normal((5, 3, 37))
    base = get_backend("emulated", algo)
    results, names, fallbacks = {}, {}, []
    for label, ex in (("fused", get_backend("emulated", "fused")),
                      ("small", base.with_device_limits(smem_per_sm=4096)),
                      ("roomy", base.with_device_limits(smem_per_sm=228 * 1024))):
        m = getattr(gl, cls)(4, 37, backend="emulated", dtype="float64", seed=2)
        ex = ex.with_algo(ex.algo)
        object.__setattr__(m, "ex", ex)  # past the fixed-attribute guard
        ex._fallback = lambda name, plan, per_sm: fallbacks.append((label, name, per_sm))
        counts = {}
        orig = ex.pw.kernel

        def counting(kname, dtype, cell=None, orig=orig, counts=counts):
            k = orig(kname, dtype, cell)

            def launch(*a, **kw):
                counts[f"{kname}<{cell}>"] = counts.get(f"{kname}<{cell}>", 0) + 1
                return k(*a, **kw)
            return launch
        ex.pw = __import__("copy").copy(ex.pw)
        ex.pw.kernel = counting
        results[label], names[label] = _fwd_bwd(m, x, gy), set(counts)
    s = {"LSTM": "LstmCell", "GRU": "GruCell"}[cls]
    assert names["small"] == names["fused"] == {f"fused_forward<{s}>", f"fused_backward<{s}>"}
    assert names["roomy"] == {f"persistent_forward<{s}>", f"persistent_backward<{s}>"}
    for a, b in zip(results["small"], results["fused"]):
        assert np.array_equal(a, b)
    assert {(f[0], f[2]) for f in fallbacks} == {("small", 0)}
    assert {f[1] for f in fallbacks} == {f"persistent_{p}<{s}>" for p in ("forward", "backward")}


def test_simulated_sm_count_and_shared_memory_change_the_plan(emulated):
    from gpulstm.cells import LSTMCell
    ex = get_backend("emulated", "persistent")
    assert ex.loop_algo(LSTMCell(), 0, 10, 11, 70, 8) == "persistent"
    assert ex.with_device_limits(sm_count=5).loop_algo(LSTMCell(), 0, 10, 11, 70, 8) == "fused"
    small = ex.with_device_limits(smem_per_block=4096)
    assert small._limits() == (132, 4096) and ex._limits() == (132, 227 * 1024)
    with pytest.raises(ValueError, match="sm_count must be a positive int"):
        ex.with_device_limits(sm_count=0)
    with pytest.raises(ValueError, match="smem_per_sm"):
        ex.with_device_limits(smem_per_sm=1.5)


def _fake_cupy_execution(monkeypatch, algo, occupancy=None, warn=False):
    from gpulstm.backends import cupy as cupy_backend
    from gpulstm.emulator import EmulatedModule
    from gpulstm.kernel_source import kernel_source
    import types
    import warnings
    src = kernel_source()
    fake = _FakeCupy(EmulatedModule(code=src.code, name_expressions=list(src.name_expressions)))
    if occupancy is not None:
        fake.cuda.driver = types.SimpleNamespace(
            occupancyMaxActiveBlocksPerMultiprocessor=lambda ptr, threads, smem: occupancy)
        monkeypatch.setattr(_FakeKernel, "ptr", 0, raising=False)
    if warn:
        call = _FakeKernel.__call__

        def shrinking(self, grid, block, args, shared_mem=0):
            if self.coop:
                warnings.warn("the grid is too large for a cooperative launch: shrinking it")
            return call(self, grid, block, args, shared_mem)
        monkeypatch.setattr(_FakeKernel, "__call__", shrinking)
    monkeypatch.setattr(cupy_backend, "_modules", cupy_backend._modules.fresh())
    monkeypatch.setattr(cupy_backend, "_limits", cupy_backend._limits.fresh())
    ex = cupy_backend.CupyExecution(fake, cublas=object()).with_algo(algo)
    ex._gemm_ex = numpy_gemm_ex
    return ex, fake


@pytest.mark.parametrize("occupancy, ran", [(0, "fused"), (1, "persistent")])
def test_cupy_occupancy_guard_on_a_fake_cupy(emulated, monkeypatch, rng, occupancy, ran):
    """The cupy execution asks the driver's occupancy calculator before a cooperative launch:
    0 blocks per SM runs fused with the numbers of algo="fused"; 1 runs persistent."""
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    gy = rng.standard_normal((4, 3, 40)).astype(np.float32)
    out = {}
    for algo in ("fused", "persistent"):
        ex, fake = _fake_cupy_execution(monkeypatch, algo, occupancy=occupancy)
        m = gl.LSTM(5, 40, backend="numpy", dtype="float32", seed=3)
        object.__setattr__(m, "ex", ex)  # past the fixed-attribute guard
        out[algo] = _fwd_bwd(m, x, gy)
        names = {n for n, _, _ in fake.launches}
    assert names == {f"{ran}_forward<LstmCell, float>", f"{ran}_backward<LstmCell, float>"}
    if ran == "fused":
        for a, b in zip(out["persistent"], out["fused"]):
            assert np.array_equal(a, b)


def test_cupy_grid_shrink_warning_is_an_error(emulated, monkeypatch, rng):
    """CuPy's warning that it shrinks a cooperative grid stops the launch with an error."""
    ex, fake = _fake_cupy_execution(monkeypatch, "persistent", warn=True)
    m = gl.LSTM(5, 40, backend="numpy", dtype="float32", seed=3)
    object.__setattr__(m, "ex", ex)  # past the fixed-attribute guard
    with pytest.raises(RuntimeError, match=r"launch of persistent_forward<LstmCell, float>.*refused"):
        m(rng.standard_normal((4, 3, 5)).astype(np.float32))
    assert not fake.launches  # nothing ran


def test_launch_trace_records_the_fallback(emulated):
    """The launch trace of a module on a simulated device whose SMs hold no persistent block:
    one "fallback" entry per persistent launch refused, then the fused kernels."""
    m = gl.LSTM(4, 37, backend="emulated", dtype="float32", algo="persistent")
    x = np.zeros((6, 3, 4), np.float32)
    tr = gl.launch_trace(m, x)
    assert tr.count(kind="fallback") == 0 and tr.count(kind="kernel", cooperative=True) == 2
    object.__setattr__(m, "ex", m.ex.with_device_limits(smem_per_sm=4096))  # past the guard
    tr = gl.launch_trace(m, x)
    fb = [c for c in tr.calls if c.kind == "fallback"]
    assert [c.name for c in fb] == ["persistent_forward<LstmCell>", "persistent_backward<LstmCell>"]
    assert all(c.cooperative and c.shared_mem > 0 for c in fb)
    assert tr.count(kind="kernel", cooperative=True) == 0
    assert tr.count(kind="kernel", in_loop=True) == 2 * 6  # the fused steps

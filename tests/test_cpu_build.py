"""The cpu execution's build flags: one build per ISA level chosen from the machine
(never -march=native), the fallback levels compile, aarch64 gets ARMv8-A."""
import platform
import shutil
import subprocess

import pytest

from gpulstm.backends import cpu

V2 = {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}
V3 = V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe"}
V4 = V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


@pytest.mark.parametrize("machine, flags, want", [
    ("x86_64", V4, "-march=x86-64-v4"),
    ("x86_64", V4 - {"avx512vl"}, "-march=x86-64-v3"),  # AVX-512F alone is not v4
    ("x86_64", V3, "-march=x86-64-v3"),  # AVX2 + FMA, no AVX-512 (e.g. AMD Zen 1-3)
    ("x86_64", V3 - {"fma"}, "-march=x86-64-v2"),
    ("AMD64", V2, "-march=x86-64-v2"),
    ("x86_64", {"sse2"}, "-march=x86-64"),
    ("x86_64", set(), "-march=x86-64"),  # /proc/cpuinfo unreadable: the baseline
])
def test_x86_level_from_the_cpu_flags(machine, flags, want):
    got = cpu.isa_flags(machine, flags)
    assert got[0] == want and "-mtune=generic" in got


@pytest.mark.parametrize("machine", ["aarch64", "arm64"])
def test_aarch64_flags(machine):
    assert cpu.isa_flags(machine, V4) == ("-march=armv8-a",)  # x86 flags are not looked at


def test_other_machines_and_no_native():
    assert cpu.isa_flags("riscv64", V4) == ()
    for machine, flags in [("x86_64", V4), ("x86_64", V3), ("x86_64", V2), ("aarch64", set())]:
        assert not any("native" in f for f in cpu.FLAGS + cpu.isa_flags(machine, flags))
    assert not any("native" in f for f in cpu.FLAGS)


def test_this_machine_uses_its_level():
    """The flags the build uses are those of this machine's /proc/cpuinfo."""
    assert cpu.isa_flags() == cpu.isa_flags(platform.machine(), cpu._cpu_flags())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not shutil.which("g++"),
                    reason="needs g++ on x86-64")
@pytest.mark.parametrize("flags", [V3, V2, set()], ids=["v3", "v2", "baseline"])
def test_fallback_levels_compile(tmp_path, flags):
    """sequence.cpp compiles (g++, the build's flags with every cell's generic loops, no run)
    at the levels below AVX-512: the AVX2 path (6 x 2 register tiles, 32-byte vectors), SSE,
    the baseline."""
    from gpulstm.kernel_source import kernel_dir
    cflags, _, _ = cpu._blas()
    isa = cpu.isa_flags("x86_64", flags)
    flags_c = [f for f in cpu.FLAGS if f != "-shared"]
    res = subprocess.run(["g++", *flags_c, *isa, *cflags, *cpu.cell_flags(), "-O1", "-c", "-o",
                          str(tmp_path / "seq.o"), str(kernel_dir() / cpu.SOURCE)],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "seq.o").stat().st_size > 0


def test_the_cpu_loop_runs_the_cell_headers():
    """The compiled loop's pointwise steps are the cells' headers (the CUDA kernels' code),
    not a copy of the math; a change to a header is a new build (it is in the cache key)."""
    from gpulstm.backends import cpu
    from gpulstm.kernel_source import kernel_dir
    src = kernel_dir() / cpu.SOURCE
    text = src.read_text()
    for header, struct in (("lstm", "LstmCell"), ("gru", "GruCell"), ("rnn", "RnnCell")):
        assert f'#include "../cells/{header}.cuh"' in text
        assert f"{struct}::forward<CpuMath" in text and f"{struct}::backward<CpuMath, R>" in text
    for formula in ("R(1) - o", "R(1) - nn * nn", "h[j] * h[j]"):  # the old inline copies
        assert formula not in text
    inputs = cpu.build_inputs(src)
    assert {p.name for p in inputs} >= {"sequence.cpp", "kernel_flags.cuh", "lstm.cuh", "gru.cuh",
                                        "rnn.cuh", "cell_common.cuh"}


@pytest.mark.parametrize("name,kw", [("CIFG", {}), ("IndRNN", {}), ("IndRNN", {"nonlinearity": "tanh"})])
def test_header_only_cells_run_the_compiled_loop(name, kw, monkeypatch):
    """A cell that brings only its class and header (CIFG, IndRNN) gets the cpu execution's
    compiled loop (cell_<Struct>_forward/backward): with its Python step disabled the cpu
    execution still runs it, and equals the NumPy reference (float64, 2 layers,
    bidirectional, lengths, every gradient)."""
    import numpy as np
    import gpulstm
    rng = np.random.default_rng()
    x = rng.standard_normal((6, 3, 5))
    dy = rng.standard_normal((6, 3, 16))
    lens = np.array([6, 2, 4])
    seed = int(rng.integers(1 << 30))
    ref = getattr(gpulstm, name)(5, 8, 2, bidirectional=True, backend="numpy", dtype="float64",
                                 seed=seed, **kw)
    want = [ref(x, lengths=lens)[0], ref.backward(dy), *ref.grads.values()]
    cell = type(ref._make_cell())

    def refuse(*a, **k):
        raise AssertionError("the stepwise loop ran")

    monkeypatch.setattr(cell, "step_forward", refuse)
    monkeypatch.setattr(cell, "step_backward", refuse)
    m = getattr(gpulstm, name)(5, 8, 2, bidirectional=True, backend="cpu", dtype="float64",
                               seed=seed, **kw)
    got = [m(x, lengths=lens)[0], m.backward(dy), *m.grads.values()]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    m.eval()  # the inference path (state ring, no saved gates)
    np.testing.assert_allclose(m(x, lengths=lens)[0], want[0], rtol=1e-12, atol=1e-13)

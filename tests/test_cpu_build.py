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
    """sequence.cpp compiles (g++, the build's flags, no run) at the levels below AVX-512:
    the AVX2 path (6 x 2 register tiles, 32-byte vectors), SSE, the baseline."""
    from gpulstm.kernel_source import kernel_dir
    cflags, _, _ = cpu._blas()
    isa = cpu.isa_flags("x86_64", flags)
    flags_c = [f for f in cpu.FLAGS if f != "-shared"]
    res = subprocess.run(["g++", *flags_c, *isa, *cflags, "-O1", "-c", "-o",
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
        assert f"{struct}::forward<CpuMath, R>" in text and f"{struct}::backward<CpuMath, R>" in text
    for formula in ("R(1) - o", "R(1) - nn * nn", "h[j] * h[j]"):  # the old inline copies
        assert formula not in text
    inputs = cpu.build_inputs(src)
    assert {p.name for p in inputs} >= {"sequence.cpp", "kernel_flags.cuh", "lstm.cuh", "gru.cuh",
                                        "rnn.cuh", "cell_common.cuh"}

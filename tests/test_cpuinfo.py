"""The CPU facts benchrun records and the FMA peak model the speed report sets beside GFLOP/s."""
import pandas as pd
import pytest

from gpulstm import benchrun, cpuinfo

_ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
cpu MHz\t\t: 2596.124
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512bw

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
cpu MHz\t\t: 1000.000
flags\t\t: fpu sse
"""


def test_first_processor_only():
    info = cpuinfo.read_cpuinfo(_ZEN5)
    assert info["vendor"] == "AuthenticAMD" and info["family"] == 26
    assert info["mhz"] == pytest.approx(2596.124)
    assert {"avx512f", "fma", "avx2"} <= info["flags"] and "avx512bw" in info["flags"]
    assert cpuinfo.machine_fields(_ZEN5) == {"cpu_vendor": "AuthenticAMD", "cpu_family": "26",
                                             "cpu_mhz": "2596", "cpu_simd": "avx512f avx2 fma"}


def test_unreadable_cpuinfo_gives_no_fields():
    assert cpuinfo.machine_fields("") == {}
    assert cpuinfo.read_cpuinfo("garbage\nno colons")["flags"] == set()


@pytest.mark.parametrize("vendor, family, simd, threads, want", [
    # Intel with AVX-512: 2 x 512-bit pipes; 2.3 GHz x 2 x 16 x 2 = 147.2 per core
    ("GenuineIntel", 6, "avx512f avx2 fma", 1, 2.3 * 2 * 16 * 2),
    ("GenuineIntel", 6, "avx512f avx2 fma", 2, 2 * 2.3 * 2 * 16 * 2),
    # AMD Zen 4 (family 0x19): AVX-512 over 256-bit pipes
    ("AuthenticAMD", 25, "avx512f avx2 fma", 1, 2.3 * 2 * 8 * 2),
    # AMD Zen 5 (family 0x1A): 512-bit pipes
    ("AuthenticAMD", 26, "avx512f avx2 fma", 1, 2.3 * 2 * 16 * 2),
    ("GenuineIntel", 6, "avx2 fma", 1, 2.3 * 2 * 8 * 2),
    ("GenuineIntel", 6, "", 1, None),          # no FMA: no model
    ("AuthenticAMD", None, "avx512f fma", 1, 2.3 * 2 * 8 * 2),  # family unknown: 256 bits
])
def test_fma_peak_model(vendor, family, simd, threads, want):
    got = cpuinfo.fma_peak_gflops_model("x86_64", vendor, family, "2300", simd, threads)
    assert got == (None if want is None else pytest.approx(want))


@pytest.mark.parametrize("arch, mhz, threads", [("aarch64", "2300", 1), ("x86_64", None, 1),
                                                ("x86_64", "2300", None), ("x86_64", "x", 1),
                                                ("x86_64", "2300", 0)])
def test_fma_peak_model_declines(arch, mhz, threads):
    assert cpuinfo.fma_peak_gflops_model(arch, "GenuineIntel", 6, mhz, "avx512f fma",
                                         threads) is None


def test_benchrun_records_the_facts(monkeypatch):
    monkeypatch.setattr(cpuinfo, "read_cpuinfo", lambda text=None: _parsed)
    info = benchrun.machine_info("m", {}, {})
    assert info["cpu_vendor"] == "AuthenticAMD" and info["cpu_simd"] == "avx512f avx2 fma"
    assert info["cpu_mhz"] == "2596" and info["cpu_family"] == "26"


_parsed = cpuinfo.read_cpuinfo(_ZEN5)


def test_speed_table_sets_gflops_beside_the_modelled_peak():
    """CpuVsTorch rows (a thread count) get the peak of their machine's facts and the share of
    it; rows without a thread count and machines without the facts get none."""
    from gpulstm.report import speed_table

    facts = {"arch": "x86_64", "cpu_vendor": "GenuineIntel", "cpu_family": "6",
             "cpu_mhz": "2300", "cpu_simd": "avx512f avx2 fma"}
    rows = []
    for machine, extra in (("new", facts), ("old", {"arch": "x86_64"})):
        for threads in (1, 2):
            rows.append({"machine": machine, "shape": "T=100 B=64 I=512 H=512",
                         "threads": threads, "mode": "training", "backend": "cpu",
                         "status": "ok", "kind": "track", "value": 100.0 * threads,
                         "benchmark": "speed.CpuVsTorch.track_gflops", **extra})
        rows.append({"machine": machine, "T": 10, "cell": "lstm", "backend": "cpu",
                     "status": "ok", "kind": "track", "mode": "training", "value": 50.0,
                     "benchmark": "speed.ThroughputSequenceLength.track_gflops", **extra})
    table = speed_table(pd.DataFrame(rows))
    cpu = table[(table["sweep"] == "CpuVsTorch") & (table["machine"] == "new")]
    one = cpu[cpu["threads"] == 1].iloc[0]
    assert one["gflops"] == 100.0
    assert one["fma_peak_gflops_model"] == pytest.approx(147.2)
    assert one["of_peak_model"] == pytest.approx(100.0 / 147.2)
    two = cpu[cpu["threads"] == 2].iloc[0]
    assert two["fma_peak_gflops_model"] == pytest.approx(2 * 147.2)
    assert table[table["sweep"] == "SequenceLength"]["fma_peak_gflops_model"].isna().all()
    assert table[table["machine"] == "old"]["of_peak_model"].isna().all()


@pytest.mark.parametrize("coretype", ["Haswell", None])
def test_benchrun_records_the_openblas_kernels(monkeypatch, coretype):
    """OPENBLAS_CORETYPE forces OpenBLAS's kernels (e.g. Haswell's 256-bit ones on an AVX-512
    CPU, half its GEMM speed): the machine record says which ran and what forced them."""
    if coretype is None:
        monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_CORETYPE", coretype)
    v = benchrun.library_versions()
    assert v["openblas_coretype"] == (coretype or "auto")
    assert v["openblas_kernels"] and (coretype is None or v["openblas_kernels"] == coretype)

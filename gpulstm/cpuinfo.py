"""What the CPU says about itself, and a model of its float32 FMA peak.

The speed report sets the GFLOP/s of a CPU row beside the machine's FMA peak, so a reader sees
how close to the limit a row is. The peak is a **model**, computed from what ``/proc/cpuinfo``
lists (vendor, family, clock, SIMD flags), never a measurement:

    peak (GFLOP/s) = threads x GHz x FMA pipes x float32 lanes per pipe x 2

with 2 FMA pipes per core (the server cores of the last decade: Intel Skylake-SP and later
Xeon Gold/Platinum, AMD Zen 2-5) and the lanes of the pipes' width: 16 with AVX-512 where the
pipes are 512 bits wide (Intel; AMD from family 0x1A, Zen 5), 8 with AVX2+FMA and on AMD's
family 0x19 (Zen 3, and Zen 4, which splits an AVX-512 instruction over its 256-bit pipes).
The clock is ``cpu MHz`` as the kernel reports it (a VM usually shows the nominal clock; turbo
can run above it, so a row may exceed "100 %"). Where the model does not hold: Xeons with one
512-bit FMA unit (some Silver and Bronze parts) peak at half of it; other architectures and
x86 without FMA get no peak (None).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["read_cpuinfo", "machine_fields", "fma_peak_gflops_model", "SIMD_FLAGS"]

#: the flags the peak model reads (recorded in machine.json as ``cpu_simd``)
SIMD_FLAGS = ("avx512f", "avx2", "fma")


def read_cpuinfo(text=None):
    """{"vendor", "family", "mhz", "flags"} of the first processor in ``/proc/cpuinfo`` (or
    ``text``); missing fields are None (flags: an empty set)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    out = {"vendor": None, "family": None, "mhz": None, "flags": set()}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if out["flags"] or out["vendor"]:  # the blank line after the first processor
                break
            continue
        key, value = key.strip(), value.strip()
        if key == "vendor_id":
            out["vendor"] = value
        elif key == "cpu family":
            out["family"] = _number(value, int)
        elif key == "cpu MHz":
            out["mhz"] = _number(value, float)
        elif key in ("flags", "Features"):
            out["flags"] = set(value.split())
    return out


def _number(text, kind):
    try:
        return kind(text)
    except ValueError:
        return None


def machine_fields(text=None):
    """The machine.json fields the peak model needs: ``cpu_vendor``, ``cpu_family``,
    ``cpu_mhz`` and ``cpu_simd`` (the :data:`SIMD_FLAGS` present, space separated), as
    strings; only those that could be read."""
    info = read_cpuinfo(text)
    out = {}
    if info["vendor"]:
        out["cpu_vendor"] = info["vendor"]
    if info["family"] is not None:
        out["cpu_family"] = str(info["family"])
    if info["mhz"]:
        out["cpu_mhz"] = f"{info['mhz']:.0f}"
    if info["vendor"] or info["flags"]:
        out["cpu_simd"] = " ".join(f for f in SIMD_FLAGS if f in info["flags"])
    return out


def fma_peak_gflops_model(arch, vendor, family, mhz, simd, threads):
    """The modelled float32 FMA peak (GFLOP/s) of ``threads`` cores (module docstring), from
    machine.json's ``arch``, ``cpu_vendor``, ``cpu_family``, ``cpu_mhz`` and ``cpu_simd``
    (strings or numbers; ``simd`` a space-separated flag list); None where the model does
    not apply or a field is missing."""
    try:
        ghz = float(mhz) / 1000.0
        threads = int(threads)
    except (TypeError, ValueError):
        return None
    if str(arch) not in ("x86_64", "amd64", "AMD64") or ghz <= 0 or threads < 1:
        return None
    flags = set(str(simd or "").split())
    if "fma" not in flags:
        return None
    try:
        family = int(family)
    except (TypeError, ValueError):
        family = None
    lanes = 8
    if "avx512f" in flags:
        amd = str(vendor) == "AuthenticAMD"
        if not amd:
            lanes = 16
        elif family is not None and family >= 0x1A:
            lanes = 16
    return threads * ghz * 2 * lanes * 2

"""The speed table: one row per measured point of the speed suite (``bench/speed.py``).

Reads the tidy frame of :func:`gpulstm.report.load_results` and puts the figures of one point
(machine, sweep, T, B, H, cell, backend, mode) side by side:

========================= ==================================================================
``time_ms``               asv's median time per call (``time_forward``: mode forward,
                          ``time_forward_backward``: mode training), in ms
``q25_ms``, ``q75_ms``    asv's interquartile range of the samples (ms)
``ratio_vs_torch``        ``track_time_ratio_vs_torch``: time over the PyTorch reference timed
                          in the same process (numpy / torch-cpu, cupy / torch-cudnn); > 1 is
                          slower than PyTorch
``us_per_step``           ``track_us_per_step`` (µs per time step), else time / T
``gflops``                ``track_gflops`` (GFLOP/s: forward 2*G*T*B*H*(I+H) FLOPs, training 3x)
``peak_mib``              ``peakmem_*``: the benchmark process's peak resident memory (MiB,
                          host memory; a GPU backend's device memory is not in it)
``fma_peak_gflops_model`` a MODEL, not a measurement: the float32 FMA peak of the row's
                          ``threads`` cores from its machine.json's CPU facts
                          (:func:`gpulstm.cpuinfo.fma_peak_gflops_model`); rows with a
                          thread count only (CpuVsTorch), empty where the facts are missing
``of_peak_model``         ``gflops`` / ``fma_peak_gflops_model``
========================= ==================================================================
"""

from __future__ import annotations

import re

import pandas as pd

from ..cpuinfo import fma_peak_gflops_model

__all__ = ["speed_table", "machine_ratios", "SPEED_COLUMNS"]

# The sequence-length sweep fixes B and H as class constants rather than asv parameters
# (bench/common.py PROFILES: seq_B=16, seq_H=256 in both profiles); filled in here so its rows
# say which B and H they measured.
_SWEEP_CONSTANTS = {"SequenceLength": {"B": 16, "H": 256}}
# shape and threads: the CpuVsTorch grid (a shape name per point, 1 or 2 threads)
_KEYS = ["machine", "sweep", "T", "B", "H", "shape", "threads", "cell", "backend", "mode"]
SPEED_COLUMNS = _KEYS + ["time_ms", "q25_ms", "q75_ms", "ratio_vs_torch", "us_per_step",
                         "gflops", "peak_mib", "fma_peak_gflops_model", "of_peak_model"]
# machine.json fields of the FMA peak model (gpulstm.cpuinfo.machine_fields, and asv's arch)
_PEAK_FACTS = ("arch", "cpu_vendor", "cpu_family", "cpu_mhz", "cpu_simd")
_TRACKS = {"time_ratio_vs_torch": "ratio_vs_torch", "us_per_step": "us_per_step",
           "gflops": "gflops"}


def _sweep(benchmark: str) -> str:
    parts = benchmark.split(".")
    cls = parts[-2] if len(parts) >= 2 else parts[-1]
    return re.sub(r"^(Throughput|Ratio)", "", cls)


def _mode_of(benchmark: str) -> str:
    name = benchmark.lower()
    return "training" if "backward" in name or "training" in name else "forward"


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    """The speed table (columns :data:`SPEED_COLUMNS`) of the ok rows of ``df`` that have a
    ``backend``; empty when there are none. Rows are sorted by machine, sweep, cell, backend,
    mode, then the swept sizes."""
    if "backend" not in df.columns or df.empty:
        return pd.DataFrame(columns=SPEED_COLUMNS)
    rows = df[(df["status"] == "ok") & df["backend"].notna()].copy()
    if rows.empty:
        return pd.DataFrame(columns=SPEED_COLUMNS)
    method = rows["benchmark"].str.rsplit(".", n=1).str[-1]
    rows["sweep"] = rows["benchmark"].map(_sweep)
    mode = rows["benchmark"].map(_mode_of)
    if "mode" in rows.columns:
        mode = rows["mode"].astype(object).where(rows["mode"].notna(), mode)
    rows["mode"] = mode
    for col in ("T", "B", "H", "shape", "threads", "cell"):
        if col not in rows.columns:
            rows[col] = pd.NA
    for sweep, fixed in _SWEEP_CONSTANTS.items():
        at = rows["sweep"] == sweep
        for col, v in fixed.items():
            rows[col] = rows[col].astype(object)
            rows.loc[at & rows[col].isna(), col] = v
    keys = _KEYS
    rows[keys] = rows[keys].astype(object).where(rows[keys].notna(), "")

    pieces = []
    time = rows[rows["kind"] == "time"]
    if not time.empty:
        t = time[keys].copy()
        t["time_ms"] = time["value"] * 1e3
        for q in ("q_25", "q_75"):
            t[q.replace("_", "") + "_ms"] = (time[q] * 1e3 if q in time.columns
                                             else float("nan"))
        pieces.append(t)
    peak = rows[rows["kind"] == "peakmem"]
    if not peak.empty:
        pieces.append(peak[keys].assign(peak_mib=peak["value"] / 2**20))
    tracks = rows[rows["kind"] == "track"]
    track_name = method[tracks.index].str.replace(r"^track_", "", regex=True)
    for name, col in _TRACKS.items():
        sel = tracks[track_name == name]
        if not sel.empty:
            pieces.append(sel[keys].assign(**{col: sel["value"]}))
    if not pieces:
        return pd.DataFrame(columns=SPEED_COLUMNS)
    out = pd.concat(pieces, ignore_index=True).groupby(keys, sort=False).first().reset_index()
    for col in SPEED_COLUMNS:
        if col not in out.columns:
            out[col] = float("nan")
    if "time_ms" in out.columns:  # µs per step from the median time where no track has it
        T = pd.to_numeric(out["T"].replace("", float("nan")), errors="coerce")
        out["us_per_step"] = out["us_per_step"].fillna(out["time_ms"] * 1e3 / T)
    out["fma_peak_gflops_model"] = _peak_model(df, out)
    out["of_peak_model"] = pd.to_numeric(out["gflops"], errors="coerce") \
        / out["fma_peak_gflops_model"]
    out = out[SPEED_COLUMNS].replace("", pd.NA)
    num = {c: pd.to_numeric(out[c], errors="coerce") for c in ("T", "B", "H")}
    order = out.assign(**{f"_{c}": v for c, v in num.items()}).sort_values(
        ["machine", "sweep", "cell", "backend", "mode", "shape", "threads", "_T", "_B", "_H"],
        kind="stable",
        na_position="first").index
    out = out.loc[order].reset_index(drop=True)
    for c in ("T", "B", "H"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    return out


def _peak_model(df: pd.DataFrame, out: pd.DataFrame) -> pd.Series:
    """The modelled FMA peak of each row of ``out`` with a thread count, from its machine's
    CPU facts in ``df`` (NaN where there are none)."""
    facts = {}
    cols = [c for c in _PEAK_FACTS if c in df.columns]
    if "machine" in df.columns:
        for machine, g in df.groupby("machine", sort=False):
            facts[machine] = {c: g[c].dropna().iloc[0] if g[c].notna().any() else None
                              for c in cols}

    def peak(row):
        f = facts.get(row["machine"], {})
        if row["threads"] in ("", None) or pd.isna(row["threads"]):
            return float("nan")
        v = fma_peak_gflops_model(f.get("arch"), f.get("cpu_vendor"), f.get("cpu_family"),
                                  f.get("cpu_mhz"), f.get("cpu_simd"), row["threads"])
        return float("nan") if v is None else v

    if out.empty:
        return pd.Series(dtype=float)
    return out.apply(peak, axis=1).astype(float)


def machine_ratios(table: pd.DataFrame, this: str) -> pd.DataFrame:
    """How machine ``this`` compares with every other machine of a :func:`speed_table`:
    per other machine, backend and mode, the median over the points both measured of
    time(this) / time(other) (> 1: this machine is slower) and how many points that is."""
    cols = ["machine", "backend", "mode", "points", "median_time_ratio"]
    if table.empty or this not in set(table["machine"]):
        return pd.DataFrame(columns=cols)
    keys = ["sweep", "T", "B", "H", "cell", "backend", "mode"]
    t = table.dropna(subset=["time_ms"])
    mine = t[t["machine"] == this][keys + ["time_ms"]]
    out = []
    for other, g in t[t["machine"] != this].groupby("machine", sort=True):
        both = mine.merge(g[keys + ["time_ms"]], on=keys, suffixes=("", "_other"))
        both["r"] = both["time_ms"] / both["time_ms_other"]
        for (backend, mode), h in both.groupby(["backend", "mode"], sort=True):
            out.append({"machine": other, "backend": backend, "mode": mode, "points": len(h),
                        "median_time_ratio": float(h["r"].median())})
    return pd.DataFrame(out, columns=cols)

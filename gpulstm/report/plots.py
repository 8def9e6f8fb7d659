"""Plots of a results DataFrame. Each function writes a PNG to ``path`` and returns the Figure.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no GUI backend, no global
state), so they work without a display and are freed when dropped.
"""

from __future__ import annotations

import os

import pandas as pd

from .._files import atomic_write
from .escape import mpl_label
from .results import param_columns

__all__ = ["plot_time_vs_T", "plot_ratio_vs_T", "plot_memory_vs_T", "cell_colors"]


def _figure(ncols: int = 1, width: float = 6.0, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, path) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def _log_x(ax, values) -> None:
    """Log x axis ticked at the measured values, written plainly (16, not 1.6x10^1)."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(sorted(float(v) for v in set(values)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _machines(rows: pd.DataFrame) -> str:
    names = sorted(map(str, rows["machine"].dropna().unique())) if "machine" in rows else []
    return ", ".join(names) if names else "unknown machine"


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _lines(rows: pd.DataFrame, x: str, fixed: list[str]):
    """Group rows into lines: by ``fixed`` plus every other column that varies (not x/seed)."""
    varying = [c for c in ["machine", "benchmark"] + param_columns(rows)
               if c in rows.columns and c not in fixed and c not in (x, "seed")
               and rows[c].nunique(dropna=True) > 1]
    keys = [c for c in fixed if c in rows.columns] + varying
    return keys, rows.groupby(keys, dropna=False, sort=True)


def _label(keys: list[str], key) -> str:
    key = key if isinstance(key, tuple) else (key,)
    parts = []
    for k, v in zip(keys, key):
        if pd.isna(v):
            continue
        if k == "benchmark":
            v = str(v).rsplit(".", 1)[-1]
        parts.append(str(v) if k in ("backend", "cell", "benchmark", "machine") else f"{k}={v}")
    return ", ".join(parts) or "all"


# A fixed palette (Okabe & Ito's colour-blind safe eight, then four more): a cell keeps its
# colour across figures; backends are told apart by line style, machines by marker.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
           "#F0E442", "#882255", "#44AA99", "#999933", "#AA4499")
KNOWN_CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_fb1", "lstm_nofg", "irnn",
               "lstm_proj", "lstm_fb0", "lstm_peep", "cifg", "indrnn")
LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def cell_colors(cells) -> dict:
    """A colour per cell name: known cells fixed, others after them in sorted order."""
    names = list(KNOWN_CELLS) + sorted(set(map(str, cells)) - set(KNOWN_CELLS))
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(names)}


def _styles(values, styles) -> dict:
    return {v: styles[i % len(styles)] for i, v in enumerate(sorted(set(map(str, values))))}


def _legend_outside(fig, colors: dict, styles: dict, markers: dict) -> None:
    """One legend to the right of the panels: colour = cell, line style = backend, marker =
    machine (a key shown only when it has more than one value, or for cells and backends)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, lw=2, label=mpl_label(f"cell {k}"))
               for k, c in colors.items()]
    handles += [Line2D([], [], color="0.3", ls=ls, lw=1.5, label=mpl_label(f"backend {k}"))
                for k, ls in styles.items()]
    if len(markers) > 1:
        handles += [Line2D([], [], color="0.3", ls="none", marker=m,
                           label=mpl_label(f"machine {k}"))
                    for k, m in markers.items()]
    fig.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False)


def _spans_decades(values) -> bool:
    v = pd.Series(values, dtype=float)
    v = v[v > 0]
    return len(v) > 1 and v.max() / v.min() >= 10


def _speed_panels(table, column, ylabel, title, path, *, ref_line=None):
    """Shared drawing of the speed figures: one panel per mode with at least two T values,
    ``column`` of :func:`gpulstm.report.speed.speed_table` against T."""
    rows = table.dropna(subset=["T", column])
    rows = rows[rows["sweep"] == "SequenceLength"] if (rows["sweep"] == "SequenceLength").any() \
        else rows
    modes = [m for m, g in rows.groupby("mode", sort=True) if g["T"].nunique() >= 2]
    if not modes:
        raise ValueError(f"no {column} rows with at least two sequence lengths T")
    rows = rows[rows["mode"].isin(modes)]
    colors = {c: v for c, v in cell_colors(rows["cell"].dropna()).items()
              if c in set(rows["cell"])}
    styles = _styles(rows["backend"], LINE_STYLES)
    markers = _styles(rows["machine"], MARKERS)
    fig, axes = _figure(len(modes), width=5.0, height=4.2)
    for ax, mode in zip(axes, modes):
        m = rows[rows["mode"] == mode]
        for (machine, cell, backend), g in m.groupby(["machine", "cell", "backend"], sort=True):
            g = g.sort_values("T")
            if len(g) < 2:
                continue
            ax.plot(g["T"].to_numpy(dtype=float), g[column].to_numpy(dtype=float),
                    color=colors.get(cell, "0.5"), ls=styles[str(backend)],
                    marker=markers[str(machine)], ms=4, lw=1.5)
        _log_x(ax, m["T"].dropna().unique())
        if _spans_decades(m[column]):
            ax.set_yscale("log")
        if ref_line is not None:
            ax.axhline(ref_line, color="0.2", lw=0.8)
        ax.set_xlabel("sequence length T (steps)")
        ax.set_ylabel(ylabel)
        ax.set_title(mpl_label(mode))
        ax.grid(True, which="both", alpha=0.3)
    _legend_outside(fig, colors, styles, markers)
    fixed = rows[["B", "H"]].dropna().drop_duplicates()
    at = (f" at B={fixed.iloc[0]['B']}, H=I={fixed.iloc[0]['H']}" if len(fixed) == 1 else "")
    fig.suptitle(mpl_label(f"{title}{at} on {_machines(rows)}"))
    _save(fig, path)
    return fig


def plot_time_vs_T(df: pd.DataFrame, path, *, benchmark: str | None = None):
    """Time per call (ms, asv's median) against sequence length T: one panel per mode
    (forward, training), colour = cell, line style = backend, marker = machine; log T axis,
    log time axis where the times span a decade or more. ``benchmark`` (a substring of the
    name) picks benchmarks. Raises ``ValueError`` without ok time rows over two T or more."""
    from .speed import speed_table

    for col in ("T", "backend"):
        if col not in df.columns:
            raise ValueError(f"plot_time_vs_T: the DataFrame has no {col!r} column")
    rows = df if benchmark is None else df[df["benchmark"].str.contains(benchmark, regex=False)]
    try:
        return _speed_panels(speed_table(rows), "time_ms", "time per call (ms, median)",
                             "time vs T", path)
    except ValueError as exc:
        raise ValueError(f"plot_time_vs_T: {exc}"
                         + (f" in benchmarks matching {benchmark!r}" if benchmark else "")) from None


def plot_ratio_vs_T(df: pd.DataFrame, path):
    """gpulstm's time over its PyTorch reference's (``track_time_ratio_vs_torch``) against T,
    one panel per mode, a line at 1 (> 1: slower than PyTorch); styles as
    :func:`plot_time_vs_T`. Raises ``ValueError`` without such rows over two T or more."""
    from .speed import speed_table

    try:
        return _speed_panels(speed_table(df), "ratio_vs_torch", "time / PyTorch's time",
                             "time ratio vs PyTorch against T", path, ref_line=1.0)
    except ValueError as exc:
        raise ValueError(f"plot_ratio_vs_T: {exc}") from None


#: the recompute benchmark's memory columns: (benchmark name ending, axis label)
_MEMORY = (("RecomputeMemory.track_traced_peak_mib", "traced peak (MiB, tracemalloc)"),
           ("RecomputeMemory.peakmem_training_step", "process peak (MiB, RSS)"))


def plot_memory_vs_T(df: pd.DataFrame, path):
    """Peak memory of a training step against sequence length T, with and without
    ``recompute`` (bench/recompute.py, RecomputeMemory): the traced peak (the arrays NumPy
    allocates: what recompute changes) and the process's peak (interpreter and libraries
    included), log-log, one line per machine and recompute setting. Raises ``ValueError``
    without such rows over two T or more."""
    if "benchmark" not in df.columns or "T" not in df.columns:
        raise ValueError("plot_memory_vs_T: the DataFrame has no benchmark/T columns")
    ok = _ok(df)
    panels = []
    for suffix, label in _MEMORY:
        rows = ok[ok["benchmark"].str.endswith(suffix) & ok["value"].notna()]
        if rows["T"].nunique() >= 2:
            panels.append((rows, label, suffix))
    if not panels:
        raise ValueError("plot_memory_vs_T: no RecomputeMemory rows over two T or more")
    fig, axes = _figure(len(panels))
    for ax, (rows, label, suffix) in zip(axes, panels):
        scale = 2.0 ** -20 if suffix.endswith("peakmem_training_step") else 1.0  # bytes -> MiB
        for (machine, rc), line in rows.groupby(["machine", rows["recompute"].astype(str)]):
            line = line.sort_values("T")
            ax.plot(line["T"].astype(float), line["value"].astype(float) * scale, marker="o",
                    linestyle="-" if rc in ("False", "None") else "--",
                    label=mpl_label(f"{machine}, recompute={rc}"))
        _log_x(ax, rows["T"])
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(mpl_label(label))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(mpl_label(f"training step memory vs T, with and without recompute "
                           f"({_machines(panels[0][0])})"))
    _save(fig, path)
    return fig

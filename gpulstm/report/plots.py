"""Plots of a results DataFrame. Each function writes a PNG to ``path`` and returns the Figure.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no GUI backend, no global
state), so they work without a display and are freed when dropped.
"""

from __future__ import annotations

import os

import pandas as pd

from .results import param_columns
from .tables import is_success_metric, task_baseline, task_rows

__all__ = ["plot_time_vs_T", "plot_gradient_flow", "plot_task_metric"]


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
    fig.savefig(path, format="png", dpi=110)


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


def plot_time_vs_T(df: pd.DataFrame, path, *, benchmark: str | None = None):
    """Time per call and µs per time step against sequence length T, one line per backend
    (and per other varying parameter), log-log. Uses ok ``time`` rows with a ``T`` column;
    ``benchmark`` (a substring of the name) picks one benchmark. Points averaged over seeds."""
    for col in ("T", "backend"):
        if col not in df.columns:
            raise ValueError(f"plot_time_vs_T: the DataFrame has no {col!r} column")
    rows = _ok(df)
    rows = rows[(rows["kind"] == "time") & rows["T"].notna() & rows["backend"].notna()]
    if benchmark is not None:
        rows = rows[rows["benchmark"].str.contains(benchmark, regex=False)]
    if rows.empty:
        raise ValueError("plot_time_vs_T: no ok time_ rows with T and backend"
                         + (f" in benchmarks matching {benchmark!r}" if benchmark else ""))
    fig, (ax_t, ax_s) = _figure(2)
    keys, groups = _lines(rows, "T", ["backend"])
    for key, g in groups:
        g = g.groupby("T")["value"].mean().sort_index()
        T = g.index.to_numpy(dtype=float)
        label = _label(keys, key)
        ax_t.plot(T, g.to_numpy(), marker="o", label=label)
        ax_s.plot(T, g.to_numpy() / T * 1e6, marker="o", label=label)
    for ax, ylabel in ((ax_t, "time per call (s)"), (ax_s, "time per step (µs)")):
        _log_x(ax, rows["T"].unique())
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (steps)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_s.legend(fontsize="small")
    what = benchmark or ", ".join(sorted({b.rsplit(".", 1)[-1] for b in rows["benchmark"]}))
    fig.suptitle(f"{what} vs T on {_machines(rows)}")
    _save(fig, path)
    return fig


def plot_gradient_flow(df: pd.DataFrame, path):
    """Gradient-flow decay ||dL/dh_t|| / ||dL/dh_T|| against distance T - t, one line per cell.

    Reads the ``track_*log10_ratio_end`` rows of ``bench/memory.py`` (loss at the last step;
    the value is log10 of the ratio at the initial state, distance T): ``TrackGradFlow`` at
    initialisation as solid lines and, where present, ``TrackAdding``'s probe of the trained
    cell (``trained`` in the name) dashed. Median over seeds; log y axis."""
    for col in ("cell", "T"):
        if col not in df.columns:
            raise ValueError(f"plot_gradient_flow: the DataFrame has no {col!r} column")
    rows = _ok(df)
    rows = rows[(rows["kind"] == "track") & rows["benchmark"].str.endswith("log10_ratio_end")
                & rows["T"].notna() & rows["cell"].notna()]
    if rows.empty:
        raise ValueError("plot_gradient_flow: no ok track_*log10_ratio_end rows")
    fig, (ax,) = _figure(1, width=7.0)
    trained = rows["benchmark"].str.contains("trained")
    colors = {c: f"C{i}" for i, c in enumerate(sorted(rows["cell"].unique()))}
    for sub, style, suffix in ((rows[~trained], "-", ""), (rows[trained], "--", " (trained)")):
        for cell, g in sub.groupby("cell", sort=True):
            s = g.groupby("T")["value"].median().sort_index()
            ax.plot(s.index.to_numpy(dtype=float), 10.0 ** s.to_numpy(dtype=float), style,
                    marker="o", color=colors[cell], label=f"{cell}{suffix}")
    ax.set_yscale("log")
    _log_x(ax, sorted(rows["T"].unique()))
    ax.set_xlabel("distance T - t (steps)")
    ax.set_ylabel("||dL/dh_t|| / ||dL/dh_T||")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    ax.set_title(f"gradient flow vs distance on {_machines(rows)}")
    _save(fig, path)
    return fig


def plot_task_metric(df: pd.DataFrame, path, *, metric: str | None = None):
    """Test metric against T per cell, one panel per task, with the task's trivial baseline.

    Uses the ok ``track_`` task rows of :func:`gpulstm.report.memory_table`'s schema; the
    metric is ``metric`` (name without ``track_``) or each task's first non-success metric.
    Points are means over seeds; bars span the seeds' min..max."""
    try:
        rows = task_rows(df)
    except ValueError as exc:
        raise ValueError(f"plot_task_metric: {exc}") from None
    if metric is not None:
        rows = rows[rows["metric"] == metric]
    else:  # each task's first test metric (not a success fraction)
        rows = rows[~rows["metric"].map(is_success_metric).astype(bool)]
        first = rows.groupby("task")["metric"].min()
        rows = rows[rows["metric"] == rows["task"].map(first)]
    if rows.empty:
        raise ValueError("plot_task_metric: no ok track_ task rows with cell and T"
                         + (f" for metric {metric!r}" if metric else ""))
    tasks = sorted(rows["task"].unique())
    fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks):
        t_rows = rows[rows["task"] == task]
        keys, groups = _lines(t_rows.drop(columns="task"), "T", ["cell"])
        for key, g in groups:
            s = g.groupby("T")["value"].agg(["mean", "min", "max"]).sort_index()
            T = s.index.to_numpy(dtype=float)
            ax.errorbar(T, s["mean"], yerr=[s["mean"] - s["min"], s["max"] - s["mean"]],
                        marker="o", capsize=3, label=_label(keys, key))
        Ts = sorted(t_rows["T"].unique())
        name = t_rows["metric"].iloc[0]
        base = [task_baseline(task, t, name) for t in Ts]
        if not pd.isna(base[0]):
            label = "chance" if "acc" in name or "err" in name else "trivial baseline"
            ax.plot([float(t) for t in Ts], base, "k--", label=label)
        _log_x(ax, Ts)
        ax.set_xlabel("sequence length T (steps)")
        unit = t_rows["unit"].dropna().unique()
        ax.set_ylabel(name + (f" ({unit[0]})" if len(unit) == 1 and unit[0] != "unit" else ""))
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"task results vs T on {_machines(rows)}")
    _save(fig, path)
    return fig

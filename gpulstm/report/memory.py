"""Long-range memory in the report: updates to criterion per task, cell and T, and plots.

Reads the asv rows of ``bench/memory.py`` (``memory.Track{Adding,TemporalOrder,Recall}``, params
cell, T, lr, seed) from :func:`gpulstm.report.load_results`, and the sweep's per-point records
(:func:`gpulstm.lab.sweep.run_sweep`; folder ``results/sweep/<machine>-<commit>/``) for the
training curves. The summary rules (solved = at least 2/3 of the seeds reached the criterion;
best learning rate; "> budget" as a lower bound) are :func:`gpulstm.lab.sweep.summarize`'s.

- :func:`memory_points`: one row per point (machine, commit, task, cell, T, lr, seed);
- :func:`criterion_tables`: (per_lr, best) per machine;
- :func:`plot_updates_to_criterion`, :func:`plot_training_curves`,
  :func:`plot_gradient_flow`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..lab.sweep import summarize, updates_wide
from ..lab.tasks import make_task
from .plots import cell_colors

__all__ = ["TASK_CLASSES", "MEMORY_TASKS", "memory_points", "criterion_tables", "load_sweep_records",
           "plot_updates_to_criterion", "plot_training_curves", "plot_gradient_flow",
           "criterion_wide", "plot_updates_to_criterion_of"]

TASK_CLASSES = {"TrackAdding": "adding", "TrackTemporalOrder": "temporal_order",
                "TrackRecall": "recall", "TrackRecallVariable": "recall_variable",
                "TrackAdding1997": "adding_1997", "TrackLongLag2a": "long_lag_2a"}
# the order of the tables and plot panels
MEMORY_TASKS = ("adding", "adding_1997", "temporal_order", "recall", "recall_variable",
                "long_lag_2a")
_TRACKS = ("updates_to_criterion", "reached", "budget", "test_metric", "passed_test")
_METRIC = {"adding": "validation MSE", "temporal_order": "validation accuracy",
           "recall": "validation accuracy", "recall_variable": "validation accuracy",
           "adding_1997": "validation fraction within 0.04",
           "long_lag_2a": "validation accuracy of the last prediction"}
_LINES = {"adding": [(1 / 6, "baseline 1/6 (predict 1)"),
                     (1 / 12, "1/12: remembers one of the two numbers"),
                     (0.01, "criterion 0.01")],
          "adding_1997": [(0.1536, "baseline 0.154 (predict 0.5)"), (0.99, "criterion 0.99")],
          "temporal_order": [(0.25, "chance 0.25"), (0.99, "criterion 0.99")],
          "recall": [(1 / 8, "chance 1/8"), (0.99, "criterion 0.99")],
          "recall_variable": [(1 / 8, "chance 1/8"), (0.99, "criterion 0.99")],
          "long_lag_2a": [(0.5, "chance 1/2"), (1.0, "criterion 1 (every sequence)")]}


def _color(cell):
    return cell_colors([cell])[cell]  # the report's fixed palette: a cell keeps its colour


def memory_points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (machine, commit, task, cell, T, lr, seed) with the columns
    ``updates_to_criterion`` (NaN: not within the budget), ``reached`` (bool), ``budget``,
    ``test_metric``, ``passed_test`` (1/0 from ``track_passed_test``; NaN in results from
    before that track, where :func:`gpulstm.lab.sweep.passed_test` applies the criterion to
    ``test_metric``), ``batch`` (32 unless the result says otherwise) and ``baseline``. Reads
    ok and failed (NaN) rows of the task tracks; skipped points are absent. Empty frame when
    ``df`` has none."""
    cols = ["machine", "commit", "task", "cell", "T", "lr", "seed", *_TRACKS]
    need = {"benchmark", "cell", "T", "lr", "seed", "value"}
    if df.empty or not need <= set(df.columns):
        return pd.DataFrame(columns=cols)
    parts = df["benchmark"].str.split(".")
    cls, meth = parts.str[-2], parts.str[-1].str.replace(r"^track_", "", regex=True)
    rows = df[parts.str[0].eq("memory") & cls.isin(TASK_CLASSES) & meth.isin(_TRACKS)].copy()
    if "status" in rows.columns:
        rows = rows[rows["status"].isin(["ok", "failed"])]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows["task"] = cls[rows.index].map(TASK_CLASSES)
    rows["track"] = meth[rows.index]
    if "commit" not in rows.columns:
        rows["commit"] = ""
    key = ["machine", "commit", "task", "cell", "T", "lr", "seed"]
    wide = rows.pivot_table(index=key, columns="track", values="value", aggfunc="first",
                            dropna=False).reset_index()
    wide = wide[wide["reached"].notna()] if "reached" in wide.columns else wide.iloc[0:0]
    for t in _TRACKS:
        if t not in wide.columns:
            wide[t] = np.nan
    wide["reached"] = wide["reached"].astype(float) > 0.5
    wide["batch"] = 32
    wide["passed_test"] = wide["passed_test"].astype(float)
    wide["baseline"] = [make_task(t, int(T)).baseline for t, T in zip(wide["task"], wide["T"])]
    wide.columns.name = None
    return wide[cols + ["batch", "baseline"]].reset_index(drop=True)


def criterion_tables(df: pd.DataFrame):
    """(per_lr, best) of :func:`gpulstm.lab.sweep.summarize` for every machine of
    :func:`memory_points`, with a ``machine`` column first. Raises ValueError without rows."""
    pts = memory_points(df)
    if pts.empty:
        raise ValueError("no long-range memory task results (memory." + ", ".join(TASK_CLASSES)
                         + " with params cell, T, lr, seed)")
    per, best = [], []
    for machine, g in pts.groupby("machine", sort=True):
        recs = g.assign(updates_to_criterion=g["updates_to_criterion"].where(g["reached"]))
        recs = recs.astype({"T": int}).to_dict("records")
        p, b = summarize(recs)
        per.append(p.assign(machine=machine))
        best.append(b.assign(machine=machine))
    per, best = pd.concat(per, ignore_index=True), pd.concat(best, ignore_index=True)
    first = ["machine"]
    return per[first + [c for c in per.columns if c not in first]], \
        best[first + [c for c in best.columns if c not in first]]


def load_sweep_records(folder) -> list[dict]:
    """The per-point JSON records a sweep left in ``folder`` (see gpulstm.lab.sweep's ``cache``)."""
    out = []
    for f in sorted(Path(folder).glob("*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, ValueError) as e:
            raise ValueError(f"{f}: not a sweep record ({e})") from None
    return out


def _figure(n, width=5.0, height=4.2):
    """A Figure on matplotlib's Agg canvas directly (no pyplot: the caller's backend and
    pyplot's figure list are left alone, as in :mod:`gpulstm.report.plots`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * n + 2.2, height))
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def _save(fig, path, handles=None, labels=None):
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   fontsize="small", frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    from .._files import atomic_write
    with atomic_write(path, "wb") as f:  # never a half-written PNG
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def _legend(axes):
    seen = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    return list(seen.values()), list(seen.keys())


def plot_updates_to_criterion(best: pd.DataFrame, path, *, title=""):
    """Updates to criterion against T per cell (best learning rate; log-log), one panel per
    task. Solved lags: the median with a bar over the seeds that reached it. Unsolved lags:
    an upward arrow from the budget ("> budget", a lower bound, not a value)."""
    tasks = [t for t in MEMORY_TASKS if t in set(best["task"])]
    if not tasks:
        raise ValueError("plot_updates_to_criterion: no rows")
    fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks):
        rows = best[best["task"] == task]
        for cell, g in rows.groupby("cell", sort=True):
            g = g.sort_values("T")
            ok = g[g["solved"]]
            c = _color(cell)
            ax.errorbar(ok["T"], ok["updates_median"],
                        yerr=[ok["updates_median"] - ok["updates_min"],
                              ok["updates_max"] - ok["updates_median"]],
                        color=c, marker="o", capsize=3, label=cell)
            bad = g[~g["solved"]]
            if len(bad):
                ax.scatter(bad["T"], bad["budget"], marker="^", s=70, color=c,
                           edgecolors="k", linewidths=0.5, zorder=3,
                           label=None if len(ok) else cell)
                for T, b in zip(bad["T"], bad["budget"]):
                    ax.annotate("", xy=(T, b * 1.8), xytext=(T, b),
                                arrowprops=dict(arrowstyle="->", color=c, lw=1.2))
        if not rows["solved"].all():
            ax.scatter([], [], marker="^", color="0.5", edgecolors="k",
                       label="> budget (not solved)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        top = max(float(rows["budget"].max()) * 2.2, float(rows["updates_max"].max()) * 1.5)
        low = rows["updates_min"].min()
        ax.set_ylim((low / 2 if low == low else 10.0), top)  # room for the arrows
        Ts = sorted(rows["T"].unique())
        ax.set_xticks(Ts)
        ax.set_xticklabels([str(int(t)) for t in Ts])
        ax.minorticks_off()
        ax.set_xlabel("lag T (steps)")
        ax.set_ylabel("Adam updates to criterion (batch 32)")
        ax.set_title(task.replace("_", " "))
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title or "updates to criterion vs lag (median over seeds, best learning rate)")
    _save(fig, path, *_legend(axes))
    return fig


def plot_training_curves(records, path, *, T=100, seed=0, best=None):
    """Validation metric against updates for one seed per cell at lag ``T`` (the best learning
    rate of ``best`` where given, else the largest lr that ran), one panel per task, with the
    baselines: the plateaus before the drop show why a fixed small budget misleads."""
    df = pd.DataFrame(records)
    if df.empty:
        raise ValueError("plot_training_curves: no records")
    df = df[(df["T"] == T) & (df["seed"] == seed)]
    tasks = [t for t in MEMORY_TASKS if t in set(df["task"])]
    if not tasks:
        raise ValueError(f"plot_training_curves: no records at T={T}, seed {seed}")
    fig, axes = _figure(len(tasks))
    for ax, task in zip(axes, tasks):
        rows = df[df["task"] == task]
        for cell, g in rows.groupby("cell", sort=True):
            lr = None
            if best is not None:
                b = best[(best["task"] == task) & (best["cell"] == cell) & (best["T"] == T)]
                lr = float(b["lr"].iloc[0]) if len(b) else None
            g = g[np.isclose(g["lr"], lr)] if lr is not None and np.isclose(g["lr"], lr).any() \
                else g[g["lr"] == g["lr"].max()]
            r = g.iloc[0]
            ev = np.asarray(r["evals"], dtype=float).reshape(-1, 2)
            ax.plot(ev[:, 0], ev[:, 1], color=_color(cell), label=cell,
                    lw=1.4, marker="." if len(ev) < 20 else None)
            if not r["reached"]:
                ax.plot(ev[-1:, 0], ev[-1:, 1], ">", color=_color(cell), ms=7)
        for y, lab in _LINES[task]:
            ax.axhline(y, color="0.35", ls=":", lw=1)
            ax.annotate(lab, xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(-4, 2),
                        textcoords="offset points", ha="right", fontsize="x-small", color="0.3")
        if task == "adding":
            ax.set_yscale("log")
        ax.set_xlabel("Adam updates (batch 32)")
        ax.set_ylabel(_METRIC[task])
        ax.set_title(f"{task.replace('_', ' ')}, T={T}, seed {seed}")
        ax.grid(True, alpha=0.3)
    fig.suptitle("training curves (validation every 50 updates; stops at the criterion)")
    _save(fig, path, *_legend(axes))
    return fig


def plot_gradient_flow(df: pd.DataFrame, path):
    """||dL/dh_0|| / ||dL/dh_T|| against the distance T at initialisation (``TrackGradFlow``,
    median over seeds; log y), one line per cell. A ratio that underflows to 0 (log10 = -inf)
    is drawn at the bottom of the axis as a downward triangle ("below float64's range")."""
    rows = df[df["benchmark"].eq("memory.TrackGradFlow.track_log10_ratio_end")] \
        if "benchmark" in df.columns else df.iloc[0:0]
    if "status" in rows.columns:
        rows = rows[rows["status"] == "ok"]
    if rows.empty:
        raise ValueError("plot_gradient_flow: no memory.TrackGradFlow.track_log10_ratio_end rows")
    med = rows.groupby(["cell", "T"])["value"].median().reset_index()
    finite = med["value"][np.isfinite(med["value"])]
    floor = math.floor(min(finite.min() if len(finite) else 0.0, -1.0)) - 1
    fig, (ax,) = _figure(1, width=7.0)
    for cell, g in med.groupby("cell", sort=True):
        g = g.sort_values("T")
        v = g["value"].to_numpy(dtype=float)
        ax.plot(g["T"], np.where(np.isfinite(v), v, np.nan), marker="o", color=_color(cell),
                label=cell)
        under = ~np.isfinite(v)
        if under.any():
            ax.scatter(g["T"][under], np.full(under.sum(), floor), marker="v", s=60,
                       color=_color(cell), edgecolors="k", linewidths=0.5, zorder=3)
    if not np.isfinite(med["value"]).all():
        ax.scatter([], [], marker="v", color="0.5", edgecolors="k", label="underflow (ratio 0)")
    ax.set_xscale("log")
    Ts = sorted(med["T"].unique())
    ax.set_xticks(Ts)
    ax.set_xticklabels([str(int(t)) for t in Ts])
    ax.minorticks_off()
    ax.set_ylim(floor - 0.5, max(1.0, float(finite.max()) + 0.5 if len(finite) else 1.0))
    ax.set_xlabel("distance T (steps from the loss to the initial state)")
    ax.set_ylabel("log10 ||dL/dh_0|| / ||dL/dh_T||")
    ax.set_title("gradient flow at initialisation (median over seeds)")
    ax.grid(True, alpha=0.3)
    _save(fig, path, *_legend([ax]))
    return fig


def criterion_wide(df: pd.DataFrame) -> dict:
    """{task: DataFrame} with one row per (machine, cell) and one column per lag T
    (:func:`gpulstm.lab.sweep.updates_wide`): the long-range memory tables of the report."""
    _, best = criterion_tables(df)
    out = {}
    for task in MEMORY_TASKS:
        b = best[best["task"] == task]
        if not b.empty:
            out[task] = updates_wide(b, ("machine", "cell"))
    return out


def plot_updates_to_criterion_of(df: pd.DataFrame, path):
    """:func:`plot_updates_to_criterion` of a results DataFrame (every machine together)."""
    _, best = criterion_tables(df)
    return plot_updates_to_criterion(best, path)

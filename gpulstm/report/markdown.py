"""A Markdown report: the plots as PNGs beside a ``report.md`` with the speed and memory tables."""

from __future__ import annotations

import os

import pandas as pd

from .plots import plot_gradient_flow, plot_task_metric, plot_time_vs_T
from .results import param_columns
from .tables import compare, latest, memory_table

__all__ = ["markdown_report", "to_markdown"]

# Speed baselines, the first present on a machine wins: cuDNN on a GPU, oneDNN on the CPU.
BASELINE_BACKENDS = ("torch-cudnn", "torch-cpu", "numpy")


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub-flavoured Markdown table of ``df`` (no index). NA cells are empty."""
    def cell(v) -> str:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([head, rule, *body])


def markdown_report(df: pd.DataFrame, out_dir, *, baseline_backends=BASELINE_BACKENDS) -> str:
    """Write the plots and ``report.md`` into ``out_dir``; return the Markdown.

    Uses each machine's newest results (:func:`gpulstm.report.latest`). The speed table
    compares every ``time_`` point with the same point on the machine's baseline backend (the
    first of ``baseline_backends`` it has); the memory table is :func:`memory_table`. Sections
    whose data is absent say so instead of failing.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    df = latest(df)
    machines = ", ".join(sorted(map(str, df["machine"].unique())))
    counts = df["status"].value_counts().to_dict() if "status" in df.columns else {}
    md = [f"# gpulstm benchmark report: {machines}", "",
          "Points: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), ""]

    md += ["## Speed", ""]
    speed = _speed_table(df, baseline_backends)
    if speed is None:
        md += ["No ok `time_` results with a `backend` parameter and a baseline backend "
               f"({', '.join(baseline_backends)}).", ""]
    else:
        md += ["`ratio` = time / baseline time (> 1: slower than the baseline); "
               "`speedup` = baseline / time.", "", to_markdown(speed), ""]
    md += _plot_section(plot_time_vs_T, df, out_dir, "time_vs_T.png", "Time and time per step vs T")

    md += ["## Long-range memory", ""]
    try:
        mem = memory_table(df)
    except ValueError as exc:
        md += [f"No memory results: {exc}", ""]
    else:
        md += ["Longest T passed per task and cell (figures at `at_T`), beside the published "
               "outcomes; `verified` says how far each was checked.", "",
               to_markdown(mem), ""]
    md += _plot_section(plot_task_metric, df, out_dir, "task_metric_vs_T.png",
                        "Task metric vs T")
    md += _plot_section(plot_gradient_flow, df, out_dir, "gradient_flow.png",
                        "Gradient flow vs distance")

    text = "\n".join(md)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fd:
        fd.write(text)
    return text


def _speed_table(df: pd.DataFrame, baseline_backends) -> pd.DataFrame | None:
    if "backend" not in df.columns:
        return None
    rows = df[(df["kind"] == "time") & (df["status"] == "ok") & df["backend"].notna()]
    by = ["machine", "benchmark"] + [c for c in param_columns(df)
                                     if c != "backend" and rows[c].notna().any()]
    if rows["env"].nunique() > 1:  # e.g. two Python versions measured on one machine
        by.insert(1, "env")
    tables = []
    for _, m in rows.groupby("machine"):
        base = next((b for b in baseline_backends if (m["backend"] == b).any()), None)
        if base is not None:
            tables.append(compare(m, {"backend": base}, by=by).assign(baseline=base))
    return pd.concat(tables, ignore_index=True) if tables else None


def _plot_section(plot, df, out_dir, name, title) -> list[str]:
    try:
        fig = plot(df, os.path.join(out_dir, name))
    except ValueError:
        return []  # nothing of this kind measured
    del fig
    return [f"### {title}", "", f"![{title}]({name})", ""]

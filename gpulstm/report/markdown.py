"""The report: speed and long-range memory tables with units and spread, and the plots, as
``report.md`` (plots as PNGs beside it), a self-contained ``report.html`` (plots embedded) and
tables on the terminal (rich).

    from gpulstm.report import load_results, markdown_report
    md = markdown_report(load_results("results"), "out/report")   # writes report.md/.html + PNGs

:func:`build_report` computes the report once; :func:`render_markdown`, :func:`render_html`
and :func:`print_report` show the same content three ways.
"""

from __future__ import annotations

import base64
import dataclasses
import os

import pandas as pd

from .._files import atomic_write
from . import escape as esc
from .escape import printable
from .plots import plot_memory_vs_T, plot_ratio_vs_T, plot_time_vs_T
from .speed import machine_ratios, speed_table
from .tables import latest

__all__ = ["markdown_report", "to_markdown", "build_report", "render_markdown", "render_html",
           "print_report", "Report"]


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub-flavoured Markdown table of ``df`` (no index). NA cells are empty."""
    def cell(v) -> str:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return ""
        if isinstance(v, float):
            return format(v, floatfmt)
        return esc.markdown(v)

    head = "| " + " | ".join(printable(c).replace("|", "\\|") for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in df.itertuples(index=False, name=None)]
    return "\n".join([head, rule, *body])


@dataclasses.dataclass
class Section:
    title: str
    note: str = ""
    table: pd.DataFrame | None = None       # display table: strings, units in the headers
    terminal: bool = True                    # also printed on the terminal
    level: int = 2


@dataclasses.dataclass
class Report:
    title: str
    summary: list[str]
    sections: list[Section]
    plots: list[tuple[str, str]]             # (title, PNG file name in out_dir)
    out_dir: str


def _g(v, fmt=".3g") -> str:
    """3 significant figures, never in exponent form for the values of these tables."""
    if v is None or pd.isna(v):
        return ""
    v = float(v)
    if fmt == ".3g" and abs(v) >= 1000:
        return f"{v:,.0f}"
    return format(v, fmt)


def _speed_display(table: pd.DataFrame) -> pd.DataFrame:
    """The speed table with units in the headers and the spread beside each median."""
    def time_cell(r):
        if pd.isna(r["time_ms"]):
            return ""
        if pd.isna(r["q25_ms"]) or pd.isna(r["q75_ms"]):
            return _g(r["time_ms"])
        return f"{_g(r['time_ms'])} [{_g(r['q25_ms'])}–{_g(r['q75_ms'])}]"

    out = pd.DataFrame({
        "machine": table["machine"], "sweep": table["sweep"],
        "T": table["T"], "B": table["B"], "H=I": table["H"],
        "shape": table["shape"].fillna(""), "threads": table["threads"].map(
            lambda v: "" if pd.isna(v) or v == "" else str(int(v))),
        "cell": table["cell"].fillna(""), "backend": table["backend"], "mode": table["mode"],
        "ms median [IQR]": table.apply(time_cell, axis=1),
        "×torch": table["ratio_vs_torch"].map(lambda v: _g(v, ".2f")),
        "µs/step": table["us_per_step"].map(_g),
        "GFLOP/s": table["gflops"].map(_g),
        "% of FMA peak (model)": table["of_peak_model"].map(
            lambda v: "" if pd.isna(v) else f"{100 * v:.0f}"),
        "peak MiB": table["peak_mib"].map(lambda v: _g(v, ".0f")),
    })
    for col in ("T", "B", "H=I"):
        out[col] = out[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
    empty = [c for c in ("×torch", "GFLOP/s", "% of FMA peak (model)", "peak MiB", "B", "H=I", "T", "shape", "threads",
                         "cell")
             if (out[c] == "").all()]
    return out.drop(columns=empty)


def _constant_columns(table: pd.DataFrame, cols) -> tuple[pd.DataFrame, str]:
    """Move the columns of ``cols`` that hold one value into a caption ("B=16, H=I=256")."""
    fixed = [c for c in cols if c in table.columns and table[c].nunique() == 1
             and table[c].iloc[0] != ""]
    caption = ", ".join(f"{c}={table[c].iloc[0]}" for c in fixed)
    return table.drop(columns=fixed), caption


def _literature_section(df: pd.DataFrame) -> Section:
    """Published outcomes beside ours, the verdicts computed from the memory results
    (:func:`gpulstm.report.memory_literature.literature_table`), per machine."""
    from .memory import criterion_tables
    from .memory_literature import literature_table
    _, best = criterion_tables(df)
    parts = [literature_table(b).assign(machine=m)
             for m, b in best.groupby("machine", sort=True)]
    t = pd.concat(parts, ignore_index=True)
    table = t[["machine", "source", "claim", "ours", "verdict"]].rename(
        columns={"claim": "published"})
    return Section("Published outcomes beside ours", "Verdict computed from the results: "
                   "\"agrees\" / \"differs\" (same task, cell and lag, the direction of the "
                   "outcome) or \"not run\"; docs/memory.md says how far each claim was "
                   "checked and how the setups differ.", table, terminal=False, level=3)


def _memory_tables(df: pd.DataFrame) -> dict:
    """{task: table} of the long-range memory results (:func:`gpulstm.report.memory.
    criterion_wide`; raises ValueError without memory results)."""
    from .memory import criterion_wide

    return criterion_wide(df)


_MEMORY_NOTE = {
    "adding": "Adding problem: Adam updates to validation MSE < 0.01 (median over seeds, range "
              "over the seeds that reached it, best learning rate); \"> N\": not within the "
              "budget of N updates.",
    "temporal_order": "Temporal order: updates to validation accuracy >= 0.99.",
    "recall": "Delayed recall of one symbol: updates to validation accuracy >= 0.99.",
    "recall_variable": "Delayed recall, the symbol at a uniform position (variable lag).",
    "adding_1997": "Adding problem as published (Hochreiter & Schmidhuber 1997): updates "
                   "until >= 99 % of the sequences are within 0.04 of the target.",
    "long_lag_2a": "Noise-free long time lag, task 2a (T = p): updates until the last "
                   "prediction is right on every sequence.",
}


def build_report(df: pd.DataFrame, out_dir, *, this_machine: str | None = None,
                 gpu_runs: pd.DataFrame | None = None) -> Report:
    """Compute the report of ``df`` (each machine's newest results, :func:`latest`) and write
    its plots into ``out_dir``. ``this_machine`` names the machine of this run: its speed table
    comes first and is compared with every other (reference) machine. ``gpu_runs``
    (:func:`gpulstm.report.gpu.load_algo_runs`): the GPU time-loop measurements to set beside
    the performance model; an empty frame shows the model alone, None leaves the section out."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    df = latest(df)
    machines = sorted(map(str, df["machine"].unique())) if len(df) else []
    counts = df["status"].value_counts().to_dict() if "status" in df.columns else {}
    summary = ["Machines: " + (", ".join(machines) or "none"),
               "Points: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    summary += [f"Note: {n}" for n in df.attrs.get("notes") or []]
    skipped_files = df.attrs.get("skipped_files") or []
    if skipped_files:
        summary.append(f"{len(skipped_files)} result files skipped as unreadable: "
                       + "; ".join(reason for _, reason in skipped_files[:3]))
    sections = []

    speed = speed_table(df)
    note = ("Per point: asv's median time per call with the interquartile range of its "
            "samples [q25–q75] (ms); “× torch”: time over the PyTorch reference timed in the "
            "same process (numpy / torch-cpu, cupy / torch-cudnn; > 1 is slower than "
            "PyTorch); µs per time step; GFLOP/s (forward 2·G·T·B·H·(I+H) FLOPs, training "
            "3×); on rows with a thread count, GFLOP/s as a share of the machine's float32 FMA peak, "
            "a model from its CPU facts (threads × clock × 2 FMA pipes × lanes × 2, "
            "gpulstm.cpuinfo), not a measurement: /proc/cpuinfo's clock is often the nominal "
            "one, so a core that boosts shows more than 100 %; peak resident memory of the benchmark "
            "process (MiB, host). SequenceLength "
            "sweeps T at fixed B and H; BatchHidden sweeps B and H at a fixed T (50 in the "
            "quick profile, 100 in the full one).")
    if speed.empty:
        sections.append(Section("Speed", "No ok speed results (benchmarks with a `backend` "
                                "parameter)."))
    else:
        order = sorted(speed["machine"].unique(), key=lambda m: (m != this_machine, m))
        sections.append(Section("Speed", note))
        for machine in order:
            label = _this(machine) if machine == this_machine else machine
            mine = speed[speed["machine"] == machine]
            for sweep, g in mine.groupby("sweep", sort=True):
                shown, caption = _constant_columns(
                    _speed_display(g).drop(columns=["machine", "sweep"]), ["T", "B", "H=I"])
                sections.append(Section(
                    f"{label}: {sweep}" + (f" at {caption}" if caption else ""), "", shown,
                    terminal=this_machine is None or machine == this_machine, level=3))
        if this_machine is not None and len(order) > 1:
            ratios = machine_ratios(speed, this_machine)
            if not ratios.empty:
                shown = ratios.rename(columns={"machine": "reference machine",
                                               "median_time_ratio": "time here / there"})
                shown["time here / there"] = shown["time here / there"].map(
                    lambda v: _g(v, ".2f"))
                sections.append(Section(
                    f"{_this(this_machine)} against the reference machines",
                    "Median over the points both measured of this run's time over the "
                    "reference machine's (> 1: slower here).", shown))

    try:
        mem = _memory_tables(df)
    except ValueError as exc:
        sections.append(Section("Long-range memory", f"No memory results: {exc}"))
    else:
        sections.append(Section(
            "Long-range memory", "Updates to criterion per task, cell and lag T (a lag counts "
            "as solved when 2 of 3 seeds reach the criterion on validation and then pass it "
            "on the held-out test sequences); docs/memory.md explains the protocol, "
            "results/memory/MEMORY.md sets the committed run beside the papers."))
        for task, table in mem.items():
            sections.append(Section(task.replace("_", " "), _MEMORY_NOTE.get(task, ""), table,
                                    terminal=True, level=3))
        sections.append(_literature_section(df))

    if gpu_runs is not None:
        from .gpu import gpu_loop_table
        table, note = gpu_loop_table(gpu_runs)
        # on the terminal only once a GPU has measured something
        sections.append(Section("GPU time loop: measurement and model", note, table,
                                terminal=len(gpu_runs) > 0))

    plots = []
    for plot, name, title in _plots():
        try:
            fig = plot(df, os.path.join(out_dir, name))
        except ValueError:
            continue  # nothing of this kind measured
        del fig
        plots.append((title, name))
    title = "gpulstm benchmark report" + (f": {_this(this_machine)}" if this_machine else "")
    return Report(title, summary, sections, plots, out_dir)


def _this(machine: str) -> str:
    return machine if machine.endswith("(this run)") else f"{machine} (this run)"


def _plots():
    """(function, file name, title) of the report's figures."""
    from .memory import plot_gradient_flow, plot_updates_to_criterion_of

    return [(plot_time_vs_T, "time_vs_T.png", "Time per call vs T"),
            (plot_ratio_vs_T, "ratio_vs_T.png", "Time ratio vs PyTorch against T"),
            (plot_memory_vs_T, "memory_vs_T.png", "Training memory vs T, with and without "
             "recompute"),
            (plot_updates_to_criterion_of, "updates_to_criterion.png",
             "Long-range memory: updates to criterion vs lag"),
            (plot_gradient_flow, "gradient_flow.png", "Gradient flow at initialisation")]


def render_markdown(report: Report) -> str:
    m = esc.markdown
    md = [f"# {m(report.title)}", ""] + [f"{m(line)}  " for line in report.summary] + [""]
    if report.plots:  # the figures first: the quickest read
        md += ["## Plots", ""]
        for title, name in report.plots:
            md += [f"### {m(title)}", "", f"![{m(title)}]({name})", ""]
    for s in report.sections:
        md += ["#" * s.level + " " + m(s.title), ""]
        if s.note:
            md += [m(s.note), ""]
        if s.table is not None:
            md += [to_markdown(s.table), ""]
    return "\n".join(md)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:nth-child(-n+2) { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
p.note { color: #555; max-width: 60em; }
"""


def render_html(report: Report) -> str:
    """A self-contained HTML page (CSS inline, plots embedded as data URIs)."""
    e = esc.html_text
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{e(report.title)}</h1>"] + [f"<p>{e(line)}</p>" for line in report.summary]
    if report.plots:  # the figures first, as in report.md
        out.append("<h2>Plots</h2>")
        for title, name in report.plots:
            with open(os.path.join(report.out_dir, name), "rb") as fd:
                data = base64.b64encode(fd.read()).decode("ascii")
            out += [f"<h3>{e(title)}</h3>",
                    f"<img alt='{e(title)}' src='data:image/png;base64,{data}'>"]
    for s in report.sections:
        out.append(f"<h{s.level}>{e(s.title)}</h{s.level}>")
        if s.note:
            out.append(f"<p class='note'>{e(s.note)}</p>")
        if s.table is not None:
            out.append(s.table.map(lambda v: v if v is None or not isinstance(v, str)
                                   else printable(v)).to_html(index=False, na_rep="",
                                                              escape=True, border=0))
    out.append("</body></html>")
    return "\n".join(out)


def print_report(report: Report, console=None) -> None:
    """The report's terminal sections as rich tables (plain text without a terminal)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file: wide enough for the speed table
            console = Console(width=150)
    text = esc.rich_text  # text from results files is never parsed as rich markup
    console.rule(text(report.title, "bold"))
    for line in report.summary:
        console.print(text(line))
    for s in report.sections:
        if not s.terminal:
            continue
        console.print()
        console.print(text(s.title, "bold"))
        if s.note:
            console.print(text(s.note, "dim"))
        if s.table is not None and not s.table.empty:
            t = Table(show_lines=False, header_style="bold", pad_edge=False)
            for col in s.table.columns:
                t.add_column(text(str(col).replace("_", " ")), justify="left" if col in (
                    "machine", "sweep", "cell", "backend", "mode", "task", "metric", "verified",
                    "reference machine") else "right", overflow="fold")
            for row in s.table.itertuples(index=False, name=None):
                t.add_row(*(text("" if v is None or (not isinstance(v, str) and pd.isna(v))
                                 else (format(v, ".3g") if isinstance(v, float) else v))
                            for v in row))
            console.print(t)


def write_report(report: Report) -> tuple[str, str, str]:
    """Write ``report.md`` and ``report.html`` into the report's folder; returns
    (markdown text, markdown path, html path)."""
    md = render_markdown(report)
    md_path = os.path.join(report.out_dir, "report.md")
    html_path = os.path.join(report.out_dir, "report.html")
    with atomic_write(md_path) as fd:
        fd.write(md)
    with atomic_write(html_path) as fd:
        fd.write(render_html(report))
    return md, md_path, html_path


def markdown_report(df: pd.DataFrame, out_dir, *, this_machine: str | None = None) -> str:
    """Write the plots, ``report.md`` and a self-contained ``report.html`` into ``out_dir``;
    return the Markdown. See :func:`build_report`."""
    return write_report(build_report(df, out_dir, this_machine=this_machine))[0]

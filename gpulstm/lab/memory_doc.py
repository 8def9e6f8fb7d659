"""Write a long-range memory report (``MEMORY.md`` + plots): measured here, beside the papers.

    python -m gpulstm.lab.memory_doc [RESULTS_DIR] [-o OUT_DIR] [--machine NAME]
        [--sweep RESULTS_DIR/sweep/<machine>-<commit> ...] [--docs docs/memory.md]

Defaults: ``results`` and ``report/memory`` (untracked). The maintainer regenerates the
committed copy with ``-o results/memory`` after a committed run. Reads the asv results with
:func:`gpulstm.report.load_results` (the project's one results parser), keeps the newest
result of each memory benchmark per machine, and the sweep's per-point records in
``RESULTS_DIR/sweep/<machine>-<commit>/`` for the training curves. Writes per machine:
updates to criterion per task, cell and T (best learning rate; every learning rate in a
second table), the gradient flow at initialisation, and the plots; then each published
outcome beside ours with the verdict computed from the records
(:mod:`gpulstm.report.memory_literature`). ``--sweep`` adds the records of sweeps run with
``gpulstm memory --cache FOLDER`` for tasks the asv results lack; ``--docs`` writes the
literature table into the generated part of ``docs/memory.md`` as well. Which paper
statements were checked against the papers' text is in ``docs/memory.md``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

from ..report import load_results
from ..report.markdown import to_markdown
from ..report.memory import (MEMORY_TASKS, criterion_tables, load_sweep_records,
                             plot_gradient_flow, plot_training_curves, plot_updates_to_criterion)
from ..report.memory_literature import literature_table
from .sweep import PROFILES, seeds_needed, summarize, updates_wide

__all__ = ["render", "build", "main"]

_TITLES = {"adding": "Adding problem (Arjovsky et al.'s variant: fixed length, values U[0, 1])",
           "adding_1997": "Adding problem as published (Hochreiter & Schmidhuber 1997, Exp. 4)",
           "long_lag_2a": "Noise-free long time lag, task 2a (Hochreiter & Schmidhuber 1997; T = p)",
           "temporal_order": "Temporal order",
           "recall": "Delayed recall (one symbol of 8, fixed lag)",
           "recall_variable": "Delayed recall (one symbol of 8, variable lag uniform in [2, T + 1])"}
_CRITERIA = {"adding": "validation MSE < 0.01 (baseline 1/6 = 0.167 by predicting 1; 1/12 = "
                       "0.083 when only one of the two numbers is remembered)",
             "temporal_order": "validation accuracy >= 0.99 (chance 0.25)",
             "recall": "validation accuracy >= 0.99 (chance 1/8)",
             "recall_variable": "validation accuracy >= 0.99 (chance 1/8)",
             "adding_1997": "at least 99 % of the validation sequences within 0.04 of the "
                            "target (the paper's 'processed correctly'; predicting 0.5: 15.4 %)",
             "long_lag_2a": "the last prediction right on every validation sequence (chance "
                            "1/2)"}


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"
    return str(v)


def _table(header, rows):
    return to_markdown(pd.DataFrame(rows, columns=header).astype(str))


def _profile_of(per_lr):
    """The sweep profile whose grid and budgets match the measured points, or None."""
    for name, p in PROFILES.items():
        ok = all(set(per_lr.loc[per_lr["task"] == t, "T"]) <= set(p["tasks"].get(t, ()))
                 for t in per_lr["task"].unique())
        ok = ok and all(int(r.budget) == int(p["budget_base"] + p["budget_per_T"] * r.T)
                        for r in per_lr.itertuples())
        if ok:
            return name, p
    return None, None


def _task_tables(task, per, best):
    wide = updates_wide(best[best["task"] == task])
    detail = per[per["task"] == task].sort_values(["cell", "T", "lr"])
    def at_criterion(r):
        failed = getattr(r, "failed_test", 0)
        return f"{r.reached}/{r.seeds}" + (f" ({failed} failed test)" if failed else "")

    drows = [[r.cell, r.T, f"{r.lr:g}", at_criterion(r), "yes" if r.solved else "no",
              _fmt(r.updates_median) if r.solved else f"> {r.budget}",
              f"{_fmt(r.updates_min)}-{_fmt(r.updates_max)}" if r.reached else "-",
              r.budget, _fmt(r.test_metric_median)] for r in detail.itertuples()]
    return [f"### {_TITLES.get(task, task)}", "",
            f"Criterion: {_CRITERIA.get(task, '-')}. Cells: median Adam updates to criterion "
            "over the seeds (range over the seeds that reached it) at the best learning rate; a seed "
            "is at the criterion when it reached it on validation and then passed it on the held-out "
            "test sequences (\"failed test\": reached on validation only); "
            "\"> N\": not solved within the budget of N updates (a lower bound).", "",
            to_markdown(wide), "",
            "<details><summary>Every learning rate</summary>", "",
            _table(["cell", "T", "lr", "seeds at criterion", "solved", "median updates",
                    "range", "budget", "test metric (median)"], drows), "", "</details>", ""]


def _flow_table(df):
    rows = df[df["benchmark"].str.startswith("memory.TrackGradFlow.")]
    if rows.empty:
        return []
    med = rows.assign(m=rows["benchmark"].str.rsplit(".", n=1).str[-1]).pivot_table(
        index=["cell", "T"], columns="m", values="value", aggfunc="median")
    out = []
    for (cell, T), r in med.iterrows():
        d3 = r.get("track_distance_1e3", math.nan)
        out.append([cell, int(T), "> T" if d3 > T else _fmt(d3),
                    _fmt(r.get("track_log10_ratio_end", math.nan))])
    return ["### Gradient flow at initialisation", "",
            "Loss at the last step only, float64, 16 adding-problem sequences, 32 units: the "
            "distance at which ||dL/dh_t|| / ||dL/dh_T|| first falls below 1e-3 (\"> T\": "
            "never within the sequence) and log10 of the ratio at the initial state (-inf: "
            "underflow). Median over seeds.", "",
            _table(["cell", "T", "distance < 1e-3", "log10 ratio at distance T"], out), ""]


def literature_section(best, heading="## Published outcomes beside ours"):
    """The self-judging literature table (:func:`gpulstm.report.memory_literature.
    literature_table`) as markdown lines: every verdict computed from ``best``."""
    t = literature_table(best)
    counts = t["verdict"].value_counts()
    summary = ", ".join(f"{int(counts.get(v, 0))} {v}" for v in ("agrees", "differs", "not run"))
    if int(counts.get("not run", 0)) == len(t):  # a table of "not run" rows says nothing
        return [heading, "", f"None of the {len(t)} published outcomes has a record on this "
                "machine (its records are of other tasks, cells or lags).", ""]
    return [heading, "",
            "Each published outcome beside ours, the verdict computed from the measured records "
            "(\"agrees\": the same direction at the same task, cell and lag; \"differs\": the "
            "other way; \"not run\": no record there). Agreement is about the direction of the "
            "result, not the numbers: sizes, optimisers and budgets differ (the note). How far "
            f"each claim was checked against the paper's text: docs/memory.md. Here: {summary}.",
            "", _table(["source", "published", "their number", "ours", "verdict", "note"],
                       t[["source", "claim", "theirs", "ours", "verdict", "note"]].values.tolist()),
            ""]


def _with_sweeps(per, best, sweeps):
    """(per, best) of the asv results plus those of sweep record folders ``sweeps``
    ({machine: records}) for the (task, cell) pairs the asv results of that machine do not
    hold (the asv results win where both have one)."""
    parts_p, parts_b = [per], [best]
    for m, recs in (sweeps or {}).items():
        mine = per[per["machine"] == m]
        have = set(zip(mine["task"], mine["cell"]))
        recs = [r for r in recs if (r["task"], r["cell"]) not in have]
        if recs:
            p, b = summarize(recs)
            parts_p.append(p.assign(machine=m))
            parts_b.append(b.assign(machine=m))
    return pd.concat(parts_p, ignore_index=True), pd.concat(parts_b, ignore_index=True)


def render(df, out_dir=None, results_dir=None, machine=None, sweeps=None):
    """The MEMORY.md text from a results DataFrame (the output of ``load_results``) and, in
    ``sweeps`` ({machine: records}), the per-point records of sweeps run with ``gpulstm
    memory --cache`` for tasks outside the asv results; with ``out_dir`` the plots are
    written there and linked."""
    mem = df[df["benchmark"].str.startswith("memory.")]
    if machine is not None:
        mem = mem[mem["machine"] == machine]
        sweeps = {m: r for m, r in (sweeps or {}).items() if m == machine}
    if mem.empty:
        raise ValueError("no memory.* benchmark results (run the suite in bench/memory.py)")
    mem = _newest_commit(mem)
    per, best = _with_sweeps(*criterion_tables(mem), sweeps)
    lines = ["# Long-range memory: measured here and published", "",
             "Generated by `python -m gpulstm.lab.memory_doc` from asv results (benchmarks in "
             "`bench/memory.py`, sweep in `gpulstm/lab/sweep.py`) and the sweep record folders "
             "given with `--sweep`; do not edit by hand.", ""]
    name, p = _profile_of(per[per["task"].isin(set(criterion_tables(mem)[0]["task"]))])
    n = int(per["seeds"].max())
    if p is not None:
        lines += [f"Profile `{name}`: one layer of {p['hidden']} units and a linear read-out, "
                  f"Adam (gradient-norm clipping at {p['clip']}), batches of {p['batch']} fresh "
                  f"sequences; the criterion is checked every {p['eval_every']} updates on "
                  f"{p['eval_size']} fresh validation sequences and training stops there; "
                  f"budget {p['budget_base']} + {p['budget_per_T']} T updates; learning rates "
                  f"per cell {sorted({lr for v in p['lrs'].values() for lr in v})}; seeds "
                  f"{list(p['seeds'])}. A lag counts as solved when at least "
                  f"{seeds_needed(n)} of {n} seeds reach the criterion; a cell's lags stop "
                  "after two failed ones, and after a solved lag only its best learning rate "
                  "continues.", ""]
    for m in sorted(per["machine"].unique()):
        sub = mem[mem["machine"] == m]
        commits = sorted(set(sub["commit"].dropna().astype(str))) if "commit" in sub else []
        lines += [f"## Machine `{m}`" + (f", commit {commits[0][:8]}" if commits else ""), ""]
        if out_dir is not None:
            lines += _plots(sub, per[per["machine"] == m], best[best["machine"] == m], m,
                            commits, Path(out_dir), results_dir)
        for task in MEMORY_TASKS:
            if task in set(per["task"]):
                lines += _task_tables(task, per[per["machine"] == m], best[best["machine"] == m])
        lines += _flow_table(sub)
    for m in sorted(best["machine"].unique()):
        lines += literature_section(best[best["machine"] == m],
                                    f"## Published outcomes beside ours (machine `{m}`)")
    return "\n".join(lines)


def _newest_commit(mem):
    """Per machine, the rows of its newest memory run (no stale rows from older commits)."""
    if "date" not in mem.columns or "commit" not in mem.columns:
        return mem
    keep = []
    for m, g in mem.groupby("machine"):
        newest = g.sort_values("date").iloc[-1]["commit"]
        keep.append(g[g["commit"] == newest])
    return pd.concat(keep)


def _plots(df, per, best, machine, commits, out, results_dir):
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    plot_updates_to_criterion(best, out / f"updates_to_criterion-{machine}.png",
                              title=f"updates to criterion vs lag on {machine}")
    lines += [f"![updates to criterion](updates_to_criterion-{machine}.png)", ""]
    if results_dir is not None and commits:
        folder = Path(results_dir) / "sweep" / f"{machine}-{commits[0][:8]}"
        if folder.is_dir():
            recs = load_sweep_records(folder)
            T = 100 if any(r["T"] == 100 for r in recs) else min(r["T"] for r in recs)
            plot_training_curves(recs, out / f"training_curves-{machine}.png", T=T, best=best)
            lines += [f"![training curves](training_curves-{machine}.png)", ""]
    try:
        plot_gradient_flow(df, out / f"gradient_flow-{machine}.png")
        lines += [f"![gradient flow](gradient_flow-{machine}.png)", ""]
    except ValueError:
        pass
    return lines


def sweep_folders(folders):
    """{machine: records} of sweep record folders named ``<machine>-<commit>``."""
    out = {}
    for f in folders or ():
        f = Path(f)
        if not f.is_dir():
            raise ValueError(f"--sweep {f}: not a folder")
        machine = f.name.rsplit("-", 1)[0]
        out.setdefault(machine, []).extend(load_sweep_records(f))
    return out


DOCS_BEGIN = "<!-- generated by python -m gpulstm.lab.memory_doc --docs: literature table -->"
DOCS_END = "<!-- end of the generated part -->"


def update_docs(path, text):
    """Replace the generated part of ``path`` (between :data:`DOCS_BEGIN` and
    :data:`DOCS_END`) by ``text``; ValueError when the markers are missing."""
    path = Path(path)
    doc = path.read_text(encoding="utf-8")
    if doc.count(DOCS_BEGIN) != 1 or doc.count(DOCS_END) != 1 or \
            doc.index(DOCS_BEGIN) > doc.index(DOCS_END):
        raise ValueError(f"{path}: expected one generated part between {DOCS_BEGIN!r} and "
                         f"{DOCS_END!r}")
    head, rest = doc.split(DOCS_BEGIN)
    _, tail = rest.split(DOCS_END)
    path.write_text(head + DOCS_BEGIN + "\n\n" + text.strip() + "\n\n" + DOCS_END + tail,
                    encoding="utf-8")
    return path


def build(results_dir="results", out_dir="report/memory", machine=None, sweeps=(), docs=None):
    """Render ``results_dir`` (and the sweep record folders ``sweeps``) into
    ``out_dir/MEMORY.md`` plus plots; with ``docs``, also the literature table into that
    file's generated part (:func:`update_docs`). Returns the MEMORY.md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recs = sweep_folders(sweeps)
    df = load_results(results_dir)
    text = render(df, out, results_dir, machine, recs)
    path = out / "MEMORY.md"
    path.write_text(text + "\n", encoding="utf-8")
    if docs is not None:
        mem = _newest_commit(df[df["benchmark"].str.startswith("memory.")])
        if machine is not None:
            mem = mem[mem["machine"] == machine]
        _, best = _with_sweeps(*criterion_tables(mem), recs)
        parts = []
        for m in sorted(best["machine"].unique()):
            parts += literature_section(best[best["machine"] == m],
                                        f"### Published outcomes beside ours (machine `{m}`)")
        src = " ".join(f"--sweep {Path(f).as_posix()}" for f in sweeps)
        parts += [f"Generated from `{Path(results_dir).as_posix()}` {src} by "
                  "`python -m gpulstm.lab.memory_doc`; do not edit by hand."]
        update_docs(docs, "\n".join(parts))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gpulstm.lab.memory_doc",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("results_dir", nargs="?", default="results",
                    help="asv results folder (default: results)")
    ap.add_argument("-o", "--out", default="report/memory",
                    help="output folder for MEMORY.md and the plots (default: report/memory)")
    ap.add_argument("--machine", help="only this machine's results")
    ap.add_argument("--sweep", action="append", default=[],
                    help="a sweep record folder <machine>-<commit> (gpulstm memory --cache) "
                         "whose tasks the asv results lack; repeatable")
    ap.add_argument("--docs", help="also write the literature table into this file's "
                                   "generated part (e.g. docs/memory.md)")
    args = ap.parse_args(argv)
    print(build(args.results_dir, args.out, args.machine, args.sweep, args.docs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

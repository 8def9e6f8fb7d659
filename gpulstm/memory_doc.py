"""Write ``results/MEMORY.md``: the long-range memory benchmarks beside the published outcomes.

    python -m gpulstm.memory_doc [RESULTS_DIR] [-o OUTPUT]     (defaults: results, RESULTS_DIR/MEMORY.md)

Reads the committed asv results with :func:`gpulstm.report.load_results` (the project's one
results parser), keeps the newest run per machine and the ``memory.*`` benchmarks of
``bench/memory.py``, and writes per machine: the gradient-flow table (rows cell x T, median
over seeds) and one table per task (rows cell x T: test metric, baseline, success rate over
seeds, sequences to the criterion, and for the adding problem the gradient flow after
training). The published outcomes come from :func:`gpulstm.report.literature.published_outcomes`
(cell names as in :func:`gpulstm.train.make_cell`; the 1997 LSTM is ``lstm_nofg``) with the
verification label ``LITERATURE.md`` allows; nothing here is presented as a paper's
number unless that table says it was verified.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import pandas as pd

from .report import load_results
from .report.literature import published_outcomes
from .report.tables import latest, memory_table
from .tasks import make_task
from .train import PROFILES

__all__ = ["render", "build", "main"]

_TASKS = [  # (task, benchmark class, metric method, metric label)
    ("adding", "TrackAdding", "track_test_mse", "test MSE"),
    ("temporal_order", "TrackTemporalOrder", "track_test_accuracy", "test accuracy"),
    ("copy", "TrackCopyMemory", "track_test_xent", "test cross-entropy"),
]
_TITLES = {"adding": "Adding problem", "temporal_order": "Temporal order",
           "copy": "Copy memory"}
_LABELS = {"verified (transcription of the published paper)": "verified (paper text)",
           "abstract only": "verified against the abstract only",
           "partly verified (third-party file quoting the PDF)":
               "partly verified (third-party quote of the PDF)",
           "as reported, not verified (secondary source)": "as reported, not verified"}
_FLOW_CLAIMS = [
    ("Bengio, Simard & Frasconi 1994", "gradient-based learning of long-term dependencies gets "
     "harder as the lag grows (latch problem; the success-vs-length curve is graphical)",
     "as reported, not verified"),
    ("Hochreiter & Schmidhuber 1997", "the LSTM's constant error carousel (c_t = c_{t-1} + i g, "
     "no forget gate) keeps the error flow constant over long lags; LSTM solved the adding "
     "problem up to T = 1000 (Table 7)", "verified (paper text)"),
    ("Jozefowicz, Zaremba & Sutskever 2015", "a forget-gate bias of 1 closes the gap between "
     "the LSTM and the GRU", "verified against the abstract only"),
]


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if v.is_integer() and abs(v) >= 1000:
            return f"{int(v):,}"
        return f"{v:.{digits}g}"
    return str(v)


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _values(df, cls, method):
    """{(cell, T): [values over seeds]} of one track method."""
    rows = df[df["benchmark"] == f"memory.{cls}.{method}"]
    out = {}
    for r in rows.itertuples():
        out.setdefault((r.cell, int(r.T)), []).append(float(r.value))
    return out


def _beyond(values, limit, label):
    """Median over the seeds whose value is within ``limit`` (values above it encode "not
    reached"), with "(k/n seeds)" when only some are; "> label" when none is."""
    if not values:
        return "-"
    within = [v for v in values if v <= limit]
    if not within:
        return f"> {label}"
    text = _fmt(float(pd.Series(within).median()))
    return text if len(within) == len(values) else f"{text} ({len(within)}/{len(values)} seeds)"


def _profile_of(df):
    ts = set(int(t) for t in df.loc[df["benchmark"].str.startswith("memory.TrackAdding"), "T"])
    for name, p in PROFILES.items():
        if ts and ts == set(p["tasks"]["adding"]):
            return name, p
    return None, None


def _published(task):
    pub = published_outcomes()
    pub = pub[pub["task"] == task]
    rows = []
    for r in pub.itertuples():
        rows.append([r.source, r.cell,
                     "-" if pd.isna(r.T) else int(r.T), r.outcome,
                     _LABELS.get(r.verified, r.verified)])
    return _table(["source", "cell", "T", "published outcome",
                   "verification"], rows) if rows else "No published outcome listed."


def _machine_section(df, machine, budget):
    """``budget``: training sequences per run (train_sequences = budget + 1: not reached)."""
    lines = [f"## Machine `{machine}`", ""]
    commits = sorted(set(df["commit"].dropna().astype(str)))
    if commits:
        lines += [f"Commit {', '.join(c[:8] for c in commits)}"
                  + (f"; environment {', '.join(sorted(set(df['env'].astype(str))))}"
                     if "env" in df.columns else "") + ".", ""]

    # gradient flow
    d3 = _values(df, "TrackGradFlow", "track_distance_1e3")
    if d3:
        d6 = _values(df, "TrackGradFlow", "track_distance_1e6")
        end = _values(df, "TrackGradFlow", "track_log10_ratio_end")
        rows = []
        for (cell, T) in sorted(d3):
            rows.append([cell, T, len(d3[(cell, T)]), _beyond(d3[(cell, T)], T, "T"),
                         _beyond(d6.get((cell, T), []), T, "T"),
                         _fmt(float(pd.Series(end.get((cell, T), [math.nan])).median()))])
        lines += ["### Gradient flow at initialisation", "",
                  "Loss at the last step only (L = u . h_T, u a fixed random unit vector), "
                  "float64, 16 adding-problem sequences, 32 hidden units, PyTorch's default "
                  "initialisation. Distance = T - t at which ||dL/dh_t|| / ||dL/dh_T|| first "
                  "falls below the threshold (\"> T\": never within the sequence; \"(k/n seeds)\": "
                  "median of the k seeds where it did); log10 ratio at the initial state "
                  "(distance T). Median over seeds.", "",
                  _table(["cell", "T", "seeds", "distance < 1e-3", "distance < 1e-6",
                          "log10 ratio at distance T"], rows), ""]

    summary = _summary(df)
    if summary:
        lines += summary
    for task, cls, method, label in _TASKS:
        metric = _values(df, cls, method)
        if not metric:
            continue
        solved = _values(df, cls, "track_solved")
        seqs = _values(df, cls, "track_train_sequences")
        g3 = _values(df, cls, "track_trained_grad_distance_1e3")
        gend = _values(df, cls, "track_trained_grad_log10_ratio_end")
        header = ["cell", "T", "seeds", label, "baseline", "metric / baseline",
                  "solved (seeds)", "sequences to criterion (median)"]
        if g3:
            header += ["after training: distance < 1e-3", "log10 ratio at T"]
        rows = []
        for (cell, T) in sorted(metric):
            t = make_task(task, T)
            vals = metric[(cell, T)]
            mean = sum(vals) / len(vals)
            s = solved.get((cell, T), [])
            row = [cell, T, len(vals), _fmt(mean), _fmt(t.baseline), _fmt(mean / t.baseline),
                   f"{int(sum(s))}/{len(s)}" if s else "-",
                   _beyond(seqs.get((cell, T), []), budget if budget else math.inf, "budget")]
            if g3:
                row += [_beyond(g3.get((cell, T), []), T, "T"),
                        _fmt(float(pd.Series(gend.get((cell, T), [math.nan])).median()))]
            rows.append(row)
        lines += [f"### {_TITLES[task]}", "",
                  f"Criterion: {make_task(task, 50).criterion}. Metric: mean over seeds. "
                  "Sequences to criterion: median over the seeds that reached it (\"(k/n "
                  "seeds)\" when only some did).", "",
                  _table(header, rows), ""]
    return lines


def _summary(df):
    """Longest lag solved per task and cell (:func:`gpulstm.report.memory_table`, a lag counts
    when at least half of the seeds met the criterion)."""
    try:
        t = memory_table(df, min_success=0.5)
    except ValueError:
        return []
    t = t[t["metric"].notna()]
    if t.empty:
        return []
    rows = [[r.task, r.cell, _fmt(r.longest_T_passed) if pd.notna(r.longest_T_passed) else
             "none", _fmt(r.first_T_failed) if pd.notna(r.first_T_failed) else "-",
             _fmt(r.max_T_tested)] for r in t.itertuples()]
    return ["### Longest lag solved (at least half of the seeds)", "",
            _table(["task", "cell", "longest T solved", "first T failed", "longest T tested"],
                   rows), ""]


def render(df):
    """The MEMORY.md text from a results DataFrame (the output of ``load_results``)."""
    mem = df[df["benchmark"].str.startswith("memory.") & (df["status"] == "ok")]
    if mem.empty:
        raise ValueError("no ok memory.* benchmark results (run the suite in bench/memory.py)")
    mem = latest(mem)
    lines = ["# Long-range memory: measured here and published", "",
             "Generated by `python -m gpulstm.memory_doc` from the asv results in this "
             "directory (benchmarks in `bench/memory.py`); do not edit by hand.", ""]
    name, p = _profile_of(mem)
    if p is not None:
        lines += [f"Budget (profile `{name}`): {p['steps']} Adam updates (learning rate "
                  f"{p['lr']}, gradient-norm clipping at {p['clip']}) of {p['batch']} fresh "
                  f"sequences each, i.e. {p['steps'] * p['batch']:,} training sequences per "
                  f"run; one layer of {p['hidden']} units plus a linear read-out; test metric "
                  "on 1000 fresh sequences; criterion checked every 50 updates on 256 fresh "
                  "sequences for \"sequences to criterion\". These are small-budget runs: a "
                  "failure means \"not within this budget\", not \"cannot learn\".", ""]
    else:
        lines += ["Budget: no profile of `gpulstm.train.PROFILES` matches the lags measured; "
                  "sequences to criterion are shown as stored (budget + 1 = not reached).", ""]
    for machine in sorted(mem["machine"].unique()):
        lines += _machine_section(mem[mem["machine"] == machine], machine,
                                  p["steps"] * p["batch"] if p else None)

    lines += ["## Published outcomes", "",
              "From `LITERATURE.md` via `gpulstm.report.literature`; \"verified\" only where "
              "that file says the paper's own text was checked. The papers' budgets, sizes "
              "and training methods differ from ours: these rows are context, not targets.", ""]
    lines += ["### Gradient flow", "",
              _table(["source", "claim", "verification"], [list(c) for c in _FLOW_CLAIMS]), ""]
    for task, *_ in _TASKS:
        lines += [f"### {_TITLES[task]}", "", _published(task), ""]
    other = published_outcomes()
    other = other[~other["task"].isin([t for t, *_ in _TASKS])]
    if not other.empty:
        rows = [[r.source, r.task, r.cell, r.outcome, _LABELS.get(r.verified, r.verified)]
                for r in other.itertuples()]
        lines += ["### Other long-lag results", "",
                  _table(["source", "task", "cell", "published outcome", "verification"], rows),
                  ""]
    return "\n".join(lines)


def build(results_dir="results", output=None):
    """Render ``results_dir`` and write it to ``output`` (default ``results_dir/MEMORY.md``).
    Returns the output path."""
    text = render(load_results(results_dir))
    output = output or os.path.join(results_dir, "MEMORY.md")
    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    return output


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m gpulstm.memory_doc", description=__doc__.split("\n")[0])
    ap.add_argument("results_dir", nargs="?", default="results")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args(argv)
    print(build(args.results_dir, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())

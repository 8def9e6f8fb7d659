"""Tables from a results DataFrame: speed ratios against a baseline, long-range memory outcomes.

Expected schema of the long-range memory benchmarks (``track_*``, written in ``bench/``)::

    memory.Track<Task>.track_<metric>      e.g. memory.TrackAdding.track_test_mse
                                                memory.TrackAdding.track_success_rate
                                                memory.TrackCopy.track_test_xent
                                                memory.TrackTemporalOrder.track_test_accuracy
    params: cell (str), T (int), seed (int, optional); further parameters (e.g. forget_bias)
            are kept apart like cells.

- The task comes from a ``task`` column when there is one, else from the class name
  (``TrackAdding`` -> ``adding``, ``TrackCopyMemory`` -> ``copy``, ``TrackTemporalOrder`` ->
  ``temporal_order``). Benchmarks whose class or method names gradient flow (``grad``) are not
  tasks and are left out.
- A *success* metric is one whose name contains ``success``, ``solved`` or ``pass``: a number
  in [0, 1] per row (1/0 per seed, or a rate). Every other metric is a *test metric*.
- A (task, cell, T) passes when, averaged over seeds, success >= ``min_success``. Without a
  success metric, the task's own criterion from :mod:`gpulstm.tasks` (``Task.passed``) is
  applied to the mean test metric whose name contains the task's metric (``mse``, ``xent``,
  ``accuracy``): adding MSE < 0.01; copy cross-entropy < 0.1 x 10 ln 8 / (T + 20); temporal
  order accuracy >= 0.99. Trivial baselines come from there too (:func:`task_baseline`).
- Cell names are those of :func:`gpulstm.train.make_cell` (``lstm_fb1``, ``lstm_nofg``,
  ``gru``, ``rnn_tanh``, ``irnn``, ...); the published outcomes use the same names.
"""

from __future__ import annotations

import re

import pandas as pd

from ..tasks import make_task
from .literature import published_outcomes
from .results import param_columns

__all__ = ["compare", "latest", "memory_table", "task_rows", "task_baseline",
           "is_success_metric"]


def compare(df: pd.DataFrame, baseline: dict, by: list[str], value: str = "value") -> pd.DataFrame:
    """Ratio of every variant to a baseline variant measured at the same ``by`` point.

    ``baseline`` names the column(s) that tell variants apart and the baseline's value(s),
    e.g. ``{"backend": "torch-cpu"}``; ``by`` names the columns that must match (include
    ``machine`` to compare on the same machine). Only ``status == "ok"`` rows that have the
    ``baseline`` columns take part.
    Returns one row per non-baseline variant that has a baseline partner: the ``by`` and
    ``baseline`` columns, ``value``, ``baseline_<value>``, ``ratio = value / baseline``
    (for times: > 1 is slower than the baseline) and ``speedup = baseline / value``.

    Raises ``ValueError`` when a named column is missing, a ``baseline`` column is also in
    ``by``, no ok row matches the baseline, or a point is not unique (several commits or
    environments: filter first, e.g. with :func:`latest`, or add the column to ``by``).
    """
    if not isinstance(baseline, dict) or not baseline:
        raise TypeError(f"baseline must be a non-empty dict column -> value, got {baseline!r}")
    by = list(by)
    keys = list(baseline)
    missing = [c for c in keys + by + [value] if c not in df.columns]
    if missing:
        raise ValueError(f"compare: columns {missing} are not in the DataFrame; it has "
                         f"{list(df.columns)}")
    both = [c for c in keys if c in by]
    if both:
        raise ValueError(f"compare: {both} are in both baseline and by; the baseline column "
                         "tells variants apart, so it cannot also be matched")

    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    ok = ok[ok[keys].notna().all(axis=1)]  # rows without the varied parameter are no variant
    is_base = pd.Series(True, index=ok.index)
    for col, want in baseline.items():
        is_base &= (ok[col] == want).fillna(False).astype(bool)
    base, others = ok[is_base], ok[~is_base]
    if base.empty:
        seen = {c: sorted(map(str, ok[c].dropna().unique())) for c in keys}
        raise ValueError(f"compare: no ok rows with {baseline}; values present: {seen}")
    _check_unique(base, by, "baseline")
    _check_unique(others, by + keys, "variant")

    base_col = f"baseline_{value}"
    right = base[by + [value]].rename(columns={value: base_col})
    out = others[by + keys + [value]].merge(right, on=by, how="inner")
    out["ratio"] = out[value] / out[base_col]
    out["speedup"] = out[base_col] / out[value]
    return out.sort_values(by + keys, kind="stable").reset_index(drop=True)


def _check_unique(rows: pd.DataFrame, keys: list[str], what: str) -> None:
    dup = rows[rows.duplicated(keys, keep=False)]
    if dup.empty:
        return
    varying = [c for c in dup.columns if c not in keys and c not in ("value", "started_at")
               and dup[c].astype(str).nunique() > 1][:6]
    raise ValueError(f"compare: {len(dup)} {what} rows share the same {keys}; the columns "
                     f"that differ among them include {varying} — filter the rows "
                     "(e.g. gpulstm.report.latest(df)) or add one of those to `by`")


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """Keep, per machine and benchmark, only the rows of its newest result (latest commit
    date, then the latest ``started_at``), so every point appears once per machine and
    environment even when a later run measured only part of the suite."""
    if df.empty:
        return df
    sort = [c for c in ("date", "started_at") if c in df.columns]
    df = df.sort_values(sort, kind="stable") if sort else df
    newest = df.groupby(["machine", "benchmark"])["commit"].transform("last")
    return df[df["commit"] == newest]


# -- long-range memory ---------------------------------------------------------------------

_TASK_ALIASES = {"adding": "adding", "adding_problem": "adding", "copy": "copy",
                 "copy_memory": "copy", "copying": "copy", "temporal_order": "temporal_order"}
_SUCCESS = re.compile(r"success|solved|pass")


def _task(task: str, T, metric: str):
    """The :class:`gpulstm.tasks.Task` whose test figure ``metric`` is, or None."""
    try:
        t = make_task(task, int(T))
    except (ValueError, TypeError):
        return None
    return t if t.metric in metric else None


def task_baseline(task: str, T: int | float, metric: str) -> float:
    """The trivial baseline of a task's test metric at lag T, from :mod:`gpulstm.tasks`
    (adding MSE 1/6; copy cross-entropy 10 ln 8 / (T + 20); temporal order accuracy 0.25);
    NaN for other tasks or metrics."""
    t = _task(task, T, metric)
    return float(t.baseline) if t is not None else float("nan")


def _task_of(benchmark: str) -> str:
    parts = benchmark.split(".")
    cls = parts[-2] if len(parts) >= 2 else parts[-1]
    cls = re.sub(r"^(Track|Time|Mem|Peakmem)", "", cls)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls).lower()
    return _TASK_ALIASES.get(snake, snake)


def task_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ok long-range memory task rows (schema in this module's docstring), with ``task``
    and ``metric`` (the method name without ``track_``) columns added. Raises ``ValueError``
    when ``df`` has no ``cell`` or ``T`` column."""
    for col in ("cell", "T"):
        if col not in df.columns:
            raise ValueError(f"the DataFrame has no {col!r} column; the memory benchmarks take "
                             "params cell, T (and seed)")
    rows = df[df["status"] == "ok"] if "status" in df.columns else df
    if "kind" in rows.columns:
        rows = rows[rows["kind"] == "track"]
    rows = rows[rows["cell"].notna() & rows["T"].notna()
                & ~rows["benchmark"].str.contains("grad", case=False)].copy()
    if "task" not in rows.columns:
        rows["task"] = rows["benchmark"].map(_task_of).astype(object)
    rows = rows[rows["task"].isin(set(_TASK_ALIASES.values()))]  # not speed tracks
    rows["metric"] = rows["benchmark"].str.rsplit(".", n=1).str[-1].str.replace(
        r"^track_", "", regex=True)
    return rows


def is_success_metric(name: str) -> bool:
    """Whether a metric name (without ``track_``) is a success fraction, not a test figure."""
    return bool(_SUCCESS.search(name))


def memory_table(df: pd.DataFrame, published: pd.DataFrame | None = None, *,
                 min_success: float = 0.5) -> pd.DataFrame:
    """Per machine, task and cell: the longest T that passes, its figures, and the papers.

    Reads the ``track_*`` task benchmarks described in this module's docstring (ok rows only)
    and averages over ``seed``. Columns: ``machine``, ``task``, ``cell`` (+ any further
    parameters), ``longest_T_passed`` (NA if none), ``first_T_failed``, ``max_T_tested``,
    ``at_T`` (the T the figures are for: the longest passed, else the shortest tested),
    ``seeds``, ``success_rate``, ``metric``, ``metric_value``, ``baseline`` (the trivial
    baseline of that metric, :func:`task_baseline`), ``pass_rule``; then from
    ``published`` (default :func:`published_outcomes`), matched on task and cell:
    ``published_longest_T``, ``published_outcome``, ``published_source``, ``verified``.
    Published rows of a measured task with no measured cell are appended with the measured
    columns empty, so the papers always show beside the measurements.
    """
    rows = task_rows(df)
    if rows.empty:
        raise ValueError("memory_table: no ok track_ rows with cell and T (expected "
                         "benchmarks like memory.TrackAdding.track_test_mse)")

    extra = [c for c in param_columns(df) if c not in ("cell", "T", "seed", "task")
             and rows[c].notna().any()]
    group = ["machine", "task", "cell"] + extra
    # Mean over seeds of each metric per (group, T).
    per_T = (rows.groupby(group + ["T", "metric"], dropna=False)["value"]
             .agg(["mean", "count"]).reset_index())

    out = []
    for key, g in per_T.groupby(group, dropna=False, sort=True):
        metrics = sorted(g["metric"].unique())
        success = next((m for m in metrics if is_success_metric(m)), None)
        tests = [m for m in metrics if m != success]
        task = dict(zip(group, key))["task"]
        # the task's own test figure (e.g. test_mse for adding) first, then any other
        own = [m for m in tests if _task(task, g["T"].iloc[0], m) is not None]
        metric = (own or tests or [None])[0]
        table = g.pivot(index="T", columns="metric", values="mean").sort_index()
        counts = g.groupby("T")["count"].max()
        task_at = {t: _task(task, t, metric) for t in table.index} if metric else {}
        if success is not None:
            passed, rule = table[success] >= min_success, f"{success} >= {min_success}"
        elif metric and all(task_at.values()):
            passed = pd.Series([task_at[t].passed(table.at[t, metric]) for t in table.index],
                               index=table.index)
            rule = next(iter(task_at.values())).criterion
        else:
            passed, rule = pd.Series(False, index=table.index), "no pass rule for these metrics"
        ok_T = [t for t in table.index if bool(passed.get(t, False))]
        bad_T = [t for t in table.index if not bool(passed.get(t, False))]
        longest = max(ok_T) if ok_T else None
        at = longest if longest is not None else table.index.min()
        value = table.at[at, metric] if metric else float("nan")
        out.append({**dict(zip(group, key)), "longest_T_passed": longest,
                    "first_T_failed": min(bad_T) if bad_T else None,
                    "max_T_tested": table.index.max(), "at_T": at, "seeds": int(counts[at]),
                    "success_rate": table.at[at, success] if success else float("nan"),
                    "metric": metric, "metric_value": value,
                    "baseline": task_baseline(task, at, metric) if metric else float("nan"),
                    "pass_rule": rule})
    measured = pd.DataFrame(out)
    for col in ("longest_T_passed", "first_T_failed", "max_T_tested", "at_T", "seeds"):
        measured[col] = measured[col].astype("Int64")
    return _with_published(measured, published_outcomes() if published is None else published)


def _with_published(measured: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    pub = published[published["task"].isin(set(measured["task"]))]
    summary = []
    for (task, cell), g in pub.groupby(["task", "cell"], sort=True):
        g = g.sort_values("T", na_position="first")
        passed_T = g.loc[g["passed"].fillna(False).astype(bool), "T"].dropna()
        summary.append({
            "task": task, "cell": cell,
            "published_longest_T": passed_T.max() if len(passed_T) else None,
            "published_outcome": "; ".join(
                (f"T={t}: " if pd.notna(t) else "") + o for t, o in zip(g["T"], g["outcome"])),
            "published_source": "; ".join(dict.fromkeys(g["source"])),
            "verified": "; ".join(dict.fromkeys(g["verified"]))})
    cols = ["task", "cell", "published_longest_T", "published_outcome", "published_source",
            "verified"]
    summary = pd.DataFrame(summary, columns=cols)
    summary["published_longest_T"] = summary["published_longest_T"].astype("Int64")
    out = measured.merge(summary, on=["task", "cell"], how="left")
    unmatched = summary.merge(measured[["task", "cell"]].drop_duplicates(), how="left",
                              on=["task", "cell"], indicator=True)
    unmatched = unmatched[unmatched["_merge"] == "left_only"].drop(columns="_merge")
    if not unmatched.empty:
        out = pd.concat([out, unmatched], ignore_index=True)
    return out.sort_values(["task", "cell"], kind="stable").reset_index(drop=True)

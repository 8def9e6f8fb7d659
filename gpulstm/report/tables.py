"""Tables from a results DataFrame: speed ratios against a baseline, newest results per machine.

The long-range memory tables are in :mod:`gpulstm.report.memory`.
"""

from __future__ import annotations

import pandas as pd

from .results import param_columns

__all__ = ["compare", "latest"]


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

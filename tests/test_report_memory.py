"""The long-range memory report: asv rows -> points -> updates-to-criterion tables and plots."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gpulstm.lab import memory_doc
from gpulstm.report.memory import (criterion_tables, memory_points, plot_gradient_flow,
                                   plot_training_curves, plot_updates_to_criterion)

# (cell, T, lr, seed) -> updates to criterion (None: not within the budget 1000 + 10 T)
POINTS = {
    ("lstm_fb1", 50, 0.01, 0): 400, ("lstm_fb1", 50, 0.01, 1): 500, ("lstm_fb1", 50, 0.01, 2): 700,
    ("lstm_fb1", 50, 0.001, 0): None, ("lstm_fb1", 50, 0.001, 1): 1400,
    ("lstm_fb1", 50, 0.001, 2): None,
    ("lstm_fb1", 100, 0.01, 0): 900, ("lstm_fb1", 100, 0.01, 1): None,
    ("lstm_fb1", 100, 0.01, 2): 1900,
    ("rnn_tanh", 50, 0.01, 0): None, ("rnn_tanh", 50, 0.01, 1): None,
    ("rnn_tanh", 50, 0.01, 2): None,
}


def _frame(task_cls="TrackAdding", machine="m1", commit="abc12345"):
    rows = []
    for (cell, T, lr, seed), u in POINTS.items():
        def add(track, v, status="ok"):
            rows.append(dict(machine=machine, commit=commit, benchmark=f"memory.{task_cls}.{track}",
                             kind="track", cell=cell, T=T, lr=lr, seed=seed, value=v,
                             status=status, date=pd.Timestamp("2026-11-28")))
        add("track_updates_to_criterion", math.nan if u is None else float(u),
            "failed" if u is None else "ok")
        add("track_reached", float(u is not None))
        add("track_budget", 1000.0 + 10 * T)
        add("track_test_metric", 0.005 if u else 0.16)
    for cell in ("lstm_fb1", "rnn_tanh"):
        for T, v in ((10, -0.5), (100, -3.0 if cell == "lstm_fb1" else -math.inf)):
            rows.append(dict(machine=machine, commit=commit, kind="track",
                             benchmark="memory.TrackGradFlow.track_log10_ratio_end", cell=cell,
                             T=T, lr=np.nan, seed=0, value=v, status="ok",
                             date=pd.Timestamp("2026-11-28")))
    return pd.DataFrame(rows)


def test_memory_points_one_row_per_point():
    pts = memory_points(_frame())
    assert len(pts) == len(POINTS)
    r = pts[(pts.cell == "lstm_fb1") & (pts["T"] == 100) & (pts.seed == 1)].iloc[0]
    assert not r.reached and math.isnan(r.updates_to_criterion) and r.budget == 2000
    assert set(pts.task) == {"adding"}


def test_criterion_tables_best_lr_and_lower_bounds():
    per, best = criterion_tables(_frame())
    b = best.set_index(["cell", "T"])
    assert b.loc[("lstm_fb1", 50)].lr == 0.01 and b.loc[("lstm_fb1", 50)].updates_text == "500 (400-700)"
    # 2 of 3 seeds at T=100: solved, the median counts the third seed as > budget
    assert b.loc[("lstm_fb1", 100)].solved and b.loc[("lstm_fb1", 100)].updates_median == 1900
    assert b.loc[("rnn_tanh", 50)].updates_text == "> 1500"
    slow = per[(per.cell == "lstm_fb1") & (per["T"] == 50) & (per.lr == 0.001)].iloc[0]
    assert not slow.solved and slow.reached == 1


def test_criterion_tables_without_memory_rows():
    with pytest.raises(ValueError, match="no long-range memory task results"):
        criterion_tables(pd.DataFrame({"benchmark": ["speed.X.time_forward"], "value": [1.0]}))


def test_plots_write_pngs(tmp_path):
    df = _frame()
    _, best = criterion_tables(df)
    plot_updates_to_criterion(best, tmp_path / "u.png")
    plot_gradient_flow(df, tmp_path / "g.png")  # rnn_tanh at T=100 underflows (-inf)
    recs = [dict(task="adding", cell=c, T=100, lr=0.01, seed=0, reached=c == "lstm_fb1",
                 evals=[[50, 0.17], [100, 0.09], [150, 0.008]]) for c in ("lstm_fb1", "rnn_tanh")]
    plot_training_curves(recs, tmp_path / "c.png", T=100, best=best)
    for f in ("u.png", "g.png", "c.png"):
        assert (tmp_path / f).stat().st_size > 10_000


def test_memory_doc_renders_tables_and_comparison(tmp_path):
    text = memory_doc.render(_frame(), tmp_path)
    assert "## Machine `m1`, commit abc12345" in text
    assert "| lstm_fb1 | 500 (400-700) @ 0.01 | 1900 (900-1900) @ 0.01 |" in text
    assert "| rnn_tanh | > 1500 | not run |" in text
    assert "Published outcomes beside ours" in text
    assert (tmp_path / "updates_to_criterion-m1.png").is_file()


def test_memory_doc_keeps_only_the_newest_run():
    old = _frame(commit="old00000").assign(date=pd.Timestamp("2026-01-01"))
    old = old.assign(value=old["value"].where(~old["benchmark"].str.endswith("criterion"), 9.0))
    text = memory_doc.render(pd.concat([old, _frame()]))
    assert "commit abc12345" in text and "old00000" not in text


def test_plots_leave_the_callers_matplotlib_alone(tmp_path):
    """The memory plots draw on an Agg canvas of their own: a caller's backend stays what it
    chose and pyplot is never imported (no global state changed by a library function)."""
    import subprocess
    import sys
    code = f"""
import sys, matplotlib
matplotlib.use("svg")
sys.path[:0] = {sys.path!r}
from test_report_memory import _frame
from gpulstm.report.memory import criterion_tables, plot_gradient_flow, plot_updates_to_criterion
df = _frame()
plot_updates_to_criterion(criterion_tables(df)[1], {str(tmp_path / 'u.png')!r})
plot_gradient_flow(df, {str(tmp_path / 'g.png')!r})
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "u.png").stat().st_size > 10_000

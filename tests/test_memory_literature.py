"""The self-judging literature table (gpulstm.report.memory_literature) on synthetic records:
every verdict reachable, computed from the records; and the report judging on test."""
import math

import pandas as pd
import pytest

from gpulstm.lab.sweep import summarize
from gpulstm.report.memory_literature import CLAIMS, literature_table


def _recs(points, batch=32):
    """Sweep records from {(task, cell, T): [updates or None per seed]} (lr 0.01)."""
    out = []
    for (task, cell, T), seeds in points.items():
        for s, u in enumerate(seeds):
            out.append(dict(task=task, cell=cell, T=T, lr=0.01, seed=s, budget=3000,
                            reached=u is not None, updates_to_criterion=u, passed_test=u is not None,
                            test_metric=1.0 if u is not None else 0.5, baseline=0.5,
                            diverged=False, batch=batch))
    return out


def _table(points):
    return literature_table(summarize(_recs(points))[1]).set_index("claim")


def _row(table, text):
    found = [c for c in table.index if text in c]
    (claim,) = [c for c in found if c.endswith(text)] if len(found) > 1 else found
    return table.loc[claim]


def test_every_claim_not_run_without_records():
    t = literature_table(pd.DataFrame())
    assert len(t) == len(CLAIMS) and set(t["verdict"]) == {"not run"}


def test_solves_claim_agrees_differs_not_run():
    ok = _table({("adding_1997", "lstm_nofg", 100): [600, 700, 800],
                 ("adding_1997", "lstm_nofg", 500): [None, None, 900]})
    r100 = _row(ok, "adding problem at T = 100")
    assert r100.verdict == "agrees"
    assert "solved in 700 updates = 22,400 sequences (3/3 seeds, lr 0.01)" in r100.ours
    r500 = _row(ok, "adding problem at T = 500")
    assert r500.verdict == "differs" and "1/3 seeds" in r500.ours
    assert _row(ok, "adding problem at T = 1000").verdict == "not run"


def test_solves_claim_is_about_the_papers_cell():
    """Another LSTM solving does not make the 1997 LSTM's claim agree; it is shown beside."""
    t = _table({("long_lag_2a", "lstm_chrono", 100): [100, 100, 150],
                ("long_lag_2a", "lstm_nofg", 100): [None, None, None]})
    r = _row(t, "noise-free long-time-lag task at p = 100")
    assert r.verdict == "differs" and "lstm_chrono: solved" in r.ours


def test_fails_claim_agrees_differs_not_run():
    agree = _table({("long_lag_2a", "rnn_tanh", 10): [None] * 3,
                    ("long_lag_2a", "rnn_tanh", 100): [None] * 3})
    r = _row(agree, "BPTT")
    assert r.verdict == "agrees" and "shorter lags: T=10 not solved" in r.ours
    differ = _table({("long_lag_2a", "rnn_tanh", 100): [500, 600, None]})
    assert _row(differ, "BPTT").verdict == "differs"
    stopped = _table({("long_lag_2a", "rnn_tanh", 10): [None] * 3,
                      ("long_lag_2a", "rnn_tanh", 50): [None] * 3})
    r = _row(stopped, "BPTT")
    assert r.verdict == "not run" and "series stopped" in r.ours


def test_chrono_claim():
    better_lag = _table({("recall", "lstm_chrono", 100): [300, 300, 400],
                         ("recall", "lstm_fb1", 100): [None] * 3,
                         ("recall", "lstm_fb1", 20): [200, 200, 200]})
    assert _row(better_lag, "chrono").verdict == "agrees"
    faster = _table({("recall", "lstm_chrono", 50): [100, 100, 100],
                     ("recall", "lstm_fb1", 50): [900, 900, 900]})
    r = _row(faster, "chrono")
    assert r.verdict == "agrees" and "100 vs 900 updates" in r.ours
    slower = _table({("recall", "lstm_chrono", 50): [900, 900, 900],
                     ("recall", "lstm_fb1", 50): [100, 100, 100]})
    assert _row(slower, "chrono").verdict == "differs"
    assert _row(_table({("recall", "lstm_fb1", 50): [1, 1, 1]}), "chrono").verdict == "not run"


def test_bias_gap_and_irnn_claims():
    t = _table({("adding", "lstm_fb1", 100): [500] * 3, ("adding", "gru", 100): [500] * 3,
                ("adding", "irnn", 100): [None] * 3,
                ("recall", "lstm_fb1", 100): [None] * 3, ("recall", "gru", 100): [300] * 3})
    r = _row(t, "forget-gate bias of 1")
    assert r.verdict == "differs" and "recall: lstm_fb1 none, gru 100" in r.ours
    assert _row(t, "IRNN").verdict == "differs"
    t2 = _table({("adding", "lstm_fb1", 100): [500] * 3, ("adding", "gru", 100): [500] * 3,
                 ("adding", "irnn", 100): [800] * 3})
    assert _row(t2, "forget-gate bias of 1").verdict == "agrees"
    assert _row(t2, "IRNN").verdict == "agrees"


def test_verdict_follows_the_test_set_not_validation():
    """A seed that reached on validation but failed the test sequences does not count."""
    recs = _recs({("adding_1997", "lstm_nofg", 100): [600, 700, 800]})
    for r in recs[:2]:
        r["passed_test"] = False
    t = literature_table(summarize(recs)[1]).set_index("claim")
    assert _row(t, "adding problem at T = 100").verdict == "differs"


def test_report_reads_the_passed_test_track():
    """memory_points carries track_passed_test, and the tables judge on it: reached on
    validation with a passing test metric but passed_test 0 is not at the criterion."""
    from gpulstm.report.memory import criterion_tables, memory_points
    rows = []
    for seed in range(3):
        for track, v in (("updates_to_criterion", 500.0), ("reached", 1.0), ("budget", 3000.0),
                         ("test_metric", 1.0), ("passed_test", float(seed == 0))):
            rows.append(dict(machine="m", commit="c", benchmark=f"memory.TrackLongLag2a.track_{track}",
                             kind="track", cell="lstm_nofg", T=100, lr=0.01, seed=seed, value=v,
                             status="ok", date=pd.Timestamp("2026-12-07")))
    df = pd.DataFrame(rows)
    pts = memory_points(df)
    assert list(pts["passed_test"]) == [1.0, 0.0, 0.0] and set(pts["task"]) == {"long_lag_2a"}
    assert pts["baseline"].tolist() == [0.5] * 3
    per, best = criterion_tables(df)
    assert int(per["reached"].iloc[0]) == 1 and int(per["failed_test"].iloc[0]) == 2
    assert not bool(best["solved"].iloc[0])
    # results from before the track: the criterion on test_metric decides
    old = memory_points(df[~df["benchmark"].str.endswith("passed_test")])
    assert old["passed_test"].isna().all()
    assert bool(criterion_tables(df[~df["benchmark"].str.endswith("passed_test")])[1]["solved"].iloc[0])
    assert math.isnan(old["passed_test"].iloc[0])


@pytest.mark.parametrize("verdict", ["agrees", "differs", "not run"])
def test_each_verdict_reachable_for_the_1997_adding_row(verdict):
    pts = {"agrees": {("adding_1997", "lstm_nofg", 1000): [900] * 3},
           "differs": {("adding_1997", "lstm_nofg", 1000): [None] * 3},
           "not run": {("adding_1997", "lstm_nofg", 500): [900] * 3}}[verdict]
    assert _row(_table(pts), "adding problem at T = 1000").verdict == verdict


def test_memory_doc_adds_sweep_records_and_judges_them(tmp_path):
    """MEMORY.md: the tasks of a sweep record folder beside the asv ones, and the literature
    verdict computed from them; the docs' generated part replaced, the rest kept."""
    from test_report_memory import _frame

    from gpulstm.lab import memory_doc
    recs = _recs({("adding_1997", "lstm_nofg", 100): [600, 700, 800]})
    text = memory_doc.render(_frame(), sweeps={"m1": recs})
    assert "Adding problem as published" in text
    line = next(l for l in text.splitlines() if "adding problem at T = 100" in l)
    assert "| agrees |" in line and "700 updates" in line
    assert "| lstm_nofg | 700 (600-800) @ 0.01 |" in text
    # asv's own tasks win over a sweep folder's records of the same task
    clash = _recs({("adding", "lstm_fb1", 50): [None, None, None]})
    assert "| lstm_fb1 | 500 (400-700) @ 0.01 |" in memory_doc.render(_frame(), sweeps={"m1": clash})

    doc = tmp_path / "d.md"
    doc.write_text(f"intro\n{memory_doc.DOCS_BEGIN}\nold table\n{memory_doc.DOCS_END}\nrest\n")
    memory_doc.update_docs(doc, "new table")
    assert doc.read_text() == (f"intro\n{memory_doc.DOCS_BEGIN}\n\nnew table\n\n"
                               f"{memory_doc.DOCS_END}\nrest\n")
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="generated part"):
        memory_doc.update_docs(doc, "x")


def test_doc_section_of_a_machine_without_any_judged_claim_is_one_line():
    """A machine whose records judge none of the claims (e.g. only the plug-in cells) gets a
    sentence, not a table of "not run" rows; one judged claim brings the table back."""
    from gpulstm.lab.memory_doc import literature_section

    none = literature_section(summarize(_recs({("adding", "cifg", 50): [300]}))[1], "## m")
    assert none[0] == "## m" and len(none) == 4 and "None of the" in none[2]
    assert not any(line.startswith("| source") for line in none)
    some = literature_section(summarize(_recs({("adding_1997", "lstm_nofg", 100): [600]}))[1],
                              "## m")
    assert any(line.startswith("| source") for line in some) and "1 agrees" in some[2]

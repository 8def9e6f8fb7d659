"""gpulstm.report: asv results -> DataFrame, comparisons, memory table, plots, Markdown.

The result files are real: asv itself runs the tiny suite in tests/report_fixtures/ (existing
environment, --quick) in a throwaway git repository, on two named machines.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("asv")
pytest.importorskip("matplotlib")

from gpulstm.report import (  # noqa: E402
    compare, latest, load_results, markdown_report, plot_gradient_flow, plot_time_vs_T,
    published_outcomes,
)
from gpulstm.report.results import ResultsFileWarning  # noqa: E402

FIXTURES = Path(__file__).parent / "report_fixtures"
COMMIT_DATE = "2024-05-01T12:00:00+00:00"
GPU_INFO = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "cuda": "12.4",
            "cupy": "13.3.0"}


def _run(cmd, cwd, env, ok=(0,)):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode in ok, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def asv_results(tmp_path_factory) -> Path:
    """Run the fixture suite with asv on machines 'box-gpu' (all) and 'box-cpu' (one class)."""
    work = tmp_path_factory.mktemp("asv")
    shutil.copytree(FIXTURES, work, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "results", "html", ".asv"))
    home = work / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_AUTHOR_DATE": COMMIT_DATE, "GIT_COMMITTER_DATE": COMMIT_DATE,
           "GIT_CONFIG_NOSYSTEM": "1"}
    _run(["git", "init", "-q", "."], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "fixture"], work, env)
    commit = _run(["git", "rev-parse", "HEAD"], work, env).stdout.strip()

    asv = [sys.executable, "-m", "asv"]
    for machine in ("box-gpu", "box-cpu"):
        _run(asv + ["machine", "--yes", "--machine", machine, "--os", "Linux",
                    "--arch", "x86_64", "--cpu", "test cpu", "--num_cpu", "4", "--ram", "1000"],
             work, env)
    # The project's wrapper records GPU facts in asv's machine file; asv copies every key
    # of it into results/<machine>/machine.json.
    machine_file = home / ".asv-machine.json"
    conf = json.loads(machine_file.read_text())
    conf["box-gpu"].update(GPU_INFO)
    machine_file.write_text(json.dumps(conf))

    run = asv + ["run", "--quick", "--environment", "existing:same",
                 f"--set-commit-hash={commit}"]
    if os.name == "posix":  # one forked process per point instead of a fresh interpreter
        run.append("--launch-method=forkserver")
    _run(run + ["--machine", "box-gpu"], work, env, ok=(0, 2))  # 2: a benchmark failed
    _run(run + ["--machine", "box-cpu", "--bench", "TrackGradFlow"], work, env)
    return work / "results"


@pytest.fixture(scope="module")
def df(asv_results) -> pd.DataFrame:
    return load_results(asv_results)


# -- load_results ------------------------------------------------------------------------------

def test_load_results_rows_and_columns(df):
    gpu = df[df["machine"] == "box-gpu"]
    # 3 backends x 2 T x 1 cell + 1 + 1 + 2 metrics x (2 x 2 x 2) + 2 x 2 gradient points
    assert len(gpu) == 6 + 1 + 1 + 16 + 4
    assert len(df[df["machine"] == "box-cpu"]) == 4
    for col in ("machine", "gpu", "driver", "cuda", "cupy", "cpu", "commit", "date", "env",
                "benchmark", "kind", "unit", "backend", "T", "cell", "seed",
                "value", "status", "q_25", "q_75", "ci_99_a", "ci_99_b", "number", "repeat"):
        assert col in df.columns, col
    assert set(gpu["gpu"]) == {GPU_INFO["gpu"]}
    assert gpu["cuda"].iloc[0] == "12.4"
    assert df.loc[df["machine"] == "box-cpu", "gpu"].isna().all()
    assert df["date"].dt.tz is not None
    assert (df["date"] == pd.Timestamp(COMMIT_DATE)).all()
    assert df["commit"].str.len().eq(40).all()
    assert set(df.attrs["param_columns"]) == {"backend", "T", "cell", "seed"}


def test_load_results_kinds_units_and_types(df):
    t = df[df["benchmark"] == "speed.TimeLSTM.time_forward"]
    assert set(t["kind"]) == {"time"} and set(t["unit"]) == {"seconds"}
    mse = df[df["benchmark"] == "memory.TrackAdding.track_test_mse"]
    assert set(mse["kind"]) == {"track"} and set(mse["unit"]) == {"mse"}
    rate = df[df["benchmark"] == "memory.TrackAdding.track_success_rate"]
    assert set(rate["unit"]) == {"fraction"}
    # Parameters decoded from asv's repr strings: ints are ints, strings strings.
    assert str(df["T"].dtype) == "Int64" and str(df["seed"].dtype) == "Int64"
    assert sorted(t["T"].unique()) == [4, 16]
    assert all(type(v) is int for v in t["T"].tolist())
    assert set(t["backend"]) == {"numpy", "torch-cpu", "cupy"}
    assert all(isinstance(b, str) for b in t["backend"])
    # Points are itertools.product order: values follow their parameters.
    lstm = mse[(mse["cell"] == "lstm")].set_index(["T", "seed"])["value"]
    assert lstm[(100, 1)] == pytest.approx(0.011)
    assert lstm[(10, 0)] == pytest.approx(0.001)
    assert mse.loc[(mse["cell"] == "rnn") & (mse["T"] == 100), "value"].tolist() == [0.17, 0.17]
    assert str(df["number"].dtype) == "Int64"


def test_load_results_statuses(df):
    gpu = df[df["machine"] == "box-gpu"]
    status = gpu.set_index("benchmark")["status"]
    assert status["speed.TimeMissingBackend.time_forward"] == "skipped"
    assert status["speed.TimeBroken.time_forward"] == "failed"
    t = gpu[gpu["benchmark"] == "speed.TimeLSTM.time_forward"]
    assert (t.loc[t["backend"] == "cupy", "status"] == "skipped").all()
    ok = t[t["backend"] != "cupy"]
    assert (ok["status"] == "ok").all() and (ok["value"] > 0).all()
    assert ok["q_25"].notna().all() and (ok["repeat"] == 1).all()
    assert gpu.loc[gpu["status"] != "ok", "value"].isna().all()
    assert (gpu.loc[gpu["kind"] == "track", "status"] == "ok").all()


def _copy(results: Path, tmp_path: Path) -> tuple[Path, Path]:
    dst = tmp_path / "results"
    shutil.copytree(results, dst)
    result_file = next((dst / "box-gpu").glob("*-existing-*.json"))
    return dst, result_file


def test_corrupted_file_raises_naming_it(asv_results, tmp_path):
    dst, result_file = _copy(asv_results, tmp_path)
    result_file.write_text(result_file.read_text()[:-40])
    with pytest.raises(ValueError, match=result_file.name):
        load_results(dst, errors="raise")


def test_bad_file_is_skipped_with_a_warning_naming_it(asv_results, tmp_path):
    """The default: one bad file does not abort the report; it is named and counted."""
    dst, result_file = _copy(asv_results, tmp_path)
    good = load_results(dst)
    assert good.attrs["skipped_files"] == []
    result_file.write_text(result_file.read_text()[:-40])
    with pytest.warns(ResultsFileWarning, match=result_file.name):
        df = load_results(dst)
    assert [p for p, _ in df.attrs["skipped_files"]] == [str(result_file)]
    assert set(df["machine"]) == {"box-cpu"}  # box-gpu's only file was skipped
    with pytest.raises(ValueError, match="errors must be"):
        load_results(dst, errors="ignore")


@pytest.mark.parametrize("mangle", [
    lambda d: d.update(results=[1, 2]),                       # results not an object
    lambda d: d.update(params="x"),                           # params not an object
    lambda d: d.update(commit_hash=["a"]),                    # not a string
    lambda d: d.update(date="yesterday"),                     # not a time
    lambda d: d.update(date=1e30),                            # out of any calendar
    lambda d: d.update(result_columns=[["result"], "params"]),  # names must be strings
    lambda d: next(iter(d["results"].values())).__setitem__(0, [["x"]]),  # result not a number
    lambda d: next(iter(d["results"].values())).__setitem__(0, [10 ** 400]),  # overflows float
])
def test_malformed_shapes_are_errors_naming_the_file(asv_results, tmp_path, mangle):
    dst, result_file = _copy(asv_results, tmp_path)
    data = json.loads(result_file.read_text())
    mangle(data)
    result_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(str(result_file))):
        load_results(dst, errors="raise")


def test_huge_parameter_product_is_refused_before_it_is_built(asv_results, tmp_path):
    """A few KB file whose params product is 300^4 (8.1e9 points): an error naming the file,
    quickly and without allocating the product."""
    dst, result_file = _copy(asv_results, tmp_path)
    data = json.loads(result_file.read_text())
    name = next(iter(data["results"]))
    row = data["results"][name]
    params_at = data["result_columns"].index("params")
    result_at = data["result_columns"].index("result")
    row[params_at] = [[repr(i) for i in range(300)]] * 4
    row[result_at] = None  # "whole benchmark failed": one None per point, were it built
    result_file.write_text(json.dumps(data))
    assert result_file.stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=re.escape(str(result_file))):
            load_results(dst, errors="raise")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20


def test_result_shape_mismatch_raises_naming_file(asv_results, tmp_path):
    dst, result_file = _copy(asv_results, tmp_path)
    data = json.loads(result_file.read_text())
    data["results"]["memory.TrackAdding.track_test_mse"][0].pop()  # 7 results for 8 points
    result_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{result_file.name}.*TrackAdding"):
        load_results(dst, errors="raise")


def test_missing_machine_json_raises(asv_results, tmp_path):
    dst, _ = _copy(asv_results, tmp_path)
    (dst / "box-cpu" / "machine.json").unlink()
    with pytest.raises(ValueError, match="machine.json"):
        load_results(dst, errors="raise")
    with pytest.warns(ResultsFileWarning, match="box-cpu.*machine.json"):
        assert set(load_results(dst)["machine"]) == {"box-gpu"}


def test_stale_benchmarks_json_falls_back_to_asv_param_names(asv_results, tmp_path):
    dst, _ = _copy(asv_results, tmp_path)
    bench = json.loads((dst / "benchmarks.json").read_text())
    del bench["memory.TrackGradFlow.track_log10_ratio_end"]  # renamed since the run
    (dst / "benchmarks.json").write_text(json.dumps(bench))
    grad = load_results(dst).query("benchmark == 'memory.TrackGradFlow.track_log10_ratio_end'")
    assert sorted(set(grad["param1"])) == ["lstm", "rnn"]
    assert sorted(set(grad["param2"])) == [10, 100]
    assert set(grad["kind"]) == {"track"} and grad["cell"].isna().all()


def test_latest_keeps_newest_commit_per_machine_and_benchmark():
    """A later run of part of the suite (here speed only) does not hide the older results of
    the benchmarks it did not run (here memory)."""
    df = pd.DataFrame({"machine": ["a", "a", "a", "b"], "commit": ["old", "new", "old", "only"],
                       "benchmark": ["speed.t", "speed.t", "memory.m", "speed.t"],
                       "date": pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-02",
                                               "2024-01-01"], utc=True),
                       "value": [1.0, 2.0, 5.0, 3.0]})
    kept = latest(df)
    assert sorted(zip(kept["machine"], kept["benchmark"], kept["commit"])) == [
        ("a", "memory.m", "old"), ("a", "speed.t", "new"), ("b", "speed.t", "only")]


def test_no_results_raises(tmp_path):
    with pytest.raises(ValueError, match="no asv result files"):
        load_results(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_results(tmp_path / "absent")


# -- compare -----------------------------------------------------------------------------------

def _speed_frame() -> pd.DataFrame:
    rows = []
    for machine, scale in (("m1", 1.0), ("m2", 10.0)):
        for T in (10, 100):
            for backend, t in (("torch-cpu", 2.0), ("numpy", 4.0), ("cupy", 0.5)):
                rows.append({"machine": machine, "benchmark": "speed.TimeLSTM.time_forward",
                             "kind": "time", "backend": backend, "T": T,
                             "value": scale * t * T, "status": "ok"})
    rows.append({"machine": "m1", "benchmark": "speed.TimeLSTM.time_forward", "kind": "time",
                 "backend": "emulated", "T": 10, "value": float("nan"), "status": "skipped"})
    rows.append({"machine": "m2", "benchmark": "speed.TimeLSTM.time_forward", "kind": "time",
                 "backend": "emulated", "T": 10, "value": 80.0, "status": "ok"})
    return pd.DataFrame(rows)


def test_compare_exact_ratios():
    out = compare(_speed_frame(), baseline={"backend": "torch-cpu"},
                  by=["machine", "benchmark", "T"])
    assert list(out.columns) == ["machine", "benchmark", "T", "backend", "value",
                                 "baseline_value", "ratio", "speedup"]
    assert "torch-cpu" not in set(out["backend"])
    assert len(out) == 2 * 2 * 2 + 1  # skipped emulated on m1 does not take part
    got = out.set_index(["machine", "T", "backend"])
    # numpy 4 vs torch 2 -> ratio 2 (slower), speedup 0.5; cupy 0.5 vs 2 -> 0.25, 4.
    assert got.loc[("m1", 10, "numpy"), "ratio"] == 2.0
    assert got.loc[("m1", 10, "numpy"), "speedup"] == 0.5
    assert got.loc[("m2", 100, "cupy"), "ratio"] == 0.25
    assert got.loc[("m2", 100, "cupy"), "speedup"] == 4.0
    assert got.loc[("m2", 100, "cupy"), "baseline_value"] == 2000.0
    assert got.loc[("m2", 10, "emulated"), "ratio"] == 80.0 / 200.0


def test_compare_errors():
    df = _speed_frame()
    with pytest.raises(ValueError, match="'dtype'|dtype"):
        compare(df, baseline={"dtype": "float32"}, by=["machine"])
    with pytest.raises(ValueError, match="no ok rows"):
        compare(df, baseline={"backend": "torch-cudnn"}, by=["machine", "benchmark", "T"])
    with pytest.raises(ValueError, match="share the same"):  # T left out of `by`
        compare(df, baseline={"backend": "torch-cpu"}, by=["machine", "benchmark"])
    with pytest.raises(ValueError, match="both"):
        compare(df, baseline={"backend": "torch-cpu"}, by=["machine", "backend"])


def test_compare_on_loaded_results(df):
    out = compare(df, baseline={"backend": "torch-cpu"}, by=["machine", "benchmark", "T", "cell"])
    assert set(out["backend"]) == {"numpy"}  # cupy skipped, torch-cpu is the baseline
    assert len(out) == 2
    assert ((out["ratio"] * out["speedup"]).round(12) == 1.0).all()


def test_published_outcomes_labels():
    pub = published_outcomes()
    assert set(pub["verified"]) <= {
        "verified (transcription of the published paper)", "abstract only",
        "partly verified (third-party file quoting the PDF)",
        "as reported, not verified (secondary source)"}
    hs = pub[(pub["task"] == "adding") & (pub["cell"] == "lstm_nofg")]
    assert hs["T"].tolist() == [100, 500, 1000] and hs["passed"].all()
    # Le et al. / Arjovsky et al.: which model passes at which T is not verified -> no pass/fail.
    assert pub.loc[pub["cell"].isin(["irnn", "urnn"]), "passed"].isna().all()


# -- plots and report --------------------------------------------------------------------------

def _png_ok(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(df, tmp_path):
    from matplotlib.figure import Figure

    fig = plot_time_vs_T(df, tmp_path / "t.png")
    assert isinstance(fig, Figure) and _png_ok(tmp_path / "t.png")
    assert "box-gpu" in fig._suptitle.get_text()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "forward"
    y = [v for line in ax.get_lines() for v in line.get_ydata()]
    assert ax.get_yscale() == ("log" if max(y) / min(y) >= 10 else "linear")
    # one legend outside the panels: colour = cell, line style = backend, marker = machine
    assert ax.get_legend() is None and len(fig.legends) == 1
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert labels == {"cell lstm", "backend numpy", "backend torch-cpu"}  # box-gpu only
    styles = {line.get_linestyle() for line in ax.get_lines()}
    assert len(styles) == 2  # two backends, told apart without colour
    assert len({line.get_color() for line in ax.get_lines()}) == 1  # one cell, one colour
    fig = plot_gradient_flow(df, tmp_path / "g.png")
    assert _png_ok(tmp_path / "g.png") and "distance" in fig.axes[0].get_xlabel()
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"lstm", "rnn"}  # one line per cell, at initialisation
    x, y = lines["rnn"].get_data()
    assert list(x) == [10, 100] and list(y) == pytest.approx([-2.5, -25])  # log10 ratio
    with pytest.raises(ValueError):
        plot_time_vs_T(df[df["kind"] == "track"], tmp_path / "none.png")


def test_markdown_report(df, tmp_path):
    md = markdown_report(df, tmp_path / "report")
    assert (tmp_path / "report" / "report.md").read_text() == md
    assert "### box-gpu: TimeLSTM" in md and "| ms median [IQR] |" in md and "torch-cpu" in md
    assert "## Long-range memory" in md and "No memory results" in md  # old-schema tracks only
    for name in ("time_vs_T.png", "gradient_flow.png"):
        assert f"]({name})" in md and _png_ok(tmp_path / "report" / name)
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 2
    assert "src='http" not in page and "<link" not in page  # self-contained


def test_speed_table_units_spread_and_ratios():
    """One row per point with the time median and IQR (ms), the ratio vs torch, µs per step,
    GFLOP/s and peak memory taken from their own benchmarks."""
    from gpulstm.report import speed_table, machine_ratios

    rows = []
    for machine, scale in (("here", 2.0), ("ref", 1.0)):
        for T in (10, 100):
            for backend in ("numpy", "torch-cpu"):
                base = {"machine": machine, "T": T, "cell": "lstm", "backend": backend,
                        "status": "ok"}
                t = scale * T * (2e-3 if backend == "numpy" else 1e-3)
                rows.append({**base, "benchmark": "speed.SequenceLength.time_forward_backward",
                             "kind": "time", "value": t, "q_25": 0.9 * t, "q_75": 1.2 * t})
                rows.append({**base, "benchmark": "speed.SequenceLength.peakmem_forward_backward",
                             "kind": "peakmem", "value": 3 * 2**20})
                rows.append({**base, "benchmark": "speed.ThroughputSequenceLength.track_gflops",
                             "kind": "track", "mode": "training", "value": 7.0})
                rows.append({**base, "benchmark": "speed.ThroughputSequenceLength.track_gflops",
                             "kind": "track", "mode": "forward", "value": 9.0})
                if backend == "numpy":
                    rows.append({**base, "kind": "track", "mode": "training", "value": 2.0,
                                 "benchmark": "speed.RatioSequenceLength.track_time_ratio_vs_torch"})
    table = speed_table(pd.DataFrame(rows))
    train = table[(table["mode"] == "training") & (table["machine"] == "ref")
                  & (table["T"] == 100) & (table["backend"] == "numpy")]
    assert len(train) == 1
    r = train.iloc[0]
    assert (r["B"], r["H"], r["sweep"]) == (16, 256, "SequenceLength")
    assert r["time_ms"] == pytest.approx(200.0) and r["q25_ms"] == pytest.approx(180.0)
    assert r["q75_ms"] == pytest.approx(240.0) and r["peak_mib"] == pytest.approx(3.0)
    assert r["gflops"] == 7.0 and r["ratio_vs_torch"] == 2.0
    assert r["us_per_step"] == pytest.approx(200e-3 / 100 * 1e6)
    fwd = table[table["mode"] == "forward"]
    assert fwd["time_ms"].isna().all() and (fwd["gflops"] == 9.0).all()
    ratios = machine_ratios(table, "here")
    assert set(ratios["machine"]) == {"ref"} and (ratios["median_time_ratio"] == 2.0).all()
    assert (ratios["points"] == 2).all()


# -- fuzzing the loader with random JSON shapes ------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=20)
_COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a",
            "stats_q_25", "samples", "number"]
# A result file that is asv-shaped at the top, with random JSON in every slot.
_result_file = st.fixed_dictionaries(
    {"version": st.sampled_from([2, 2, 2, 1]) | _json,
     "commit_hash": st.text(max_size=8) | _json, "env_name": st.text(max_size=8),
     "date": st.integers(0, 2 * 10 ** 12) | _json,
     "params": st.fixed_dictionaries({"machine": st.sampled_from(["fuzz", "other"])}) | _json,
     "result_columns": st.just(_COLUMNS) | st.lists(st.sampled_from(_COLUMNS)) | _json,
     "results": st.dictionaries(
         st.sampled_from(["s.A.time_f", "m.B.track_x", "p.C.peakmem_y"]),
         st.lists(st.lists(st.text(max_size=4), max_size=3).map(lambda p: [p])
                  | st.lists(st.integers(0, 3) | st.floats() | st.none(), max_size=4)
                  | _json, max_size=len(_COLUMNS)) | _json, max_size=3) | _json})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=_result_file | _json, benchmarks=_json)
def test_fuzz_loader_gives_a_frame_or_an_error_naming_the_file(tmp_path_factory, data,
                                                                benchmarks):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "fuzz").mkdir()
    (root / "fuzz" / "machine.json").write_text(json.dumps({"machine": "fuzz", "version": 1}))
    (root / "benchmarks.json").write_text(json.dumps(benchmarks))
    path = root / "fuzz" / "abc-env.json"
    path.write_text(json.dumps(data))
    tracemalloc.start()
    try:
        try:
            df = load_results(root, errors="raise")
        except ValueError as exc:
            assert str(path) in str(exc) or "benchmarks.json" in str(exc), exc
        else:
            assert isinstance(df, pd.DataFrame)
            assert set(df["status"]) <= {"ok", "skipped", "failed"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResultsFileWarning)
            try:
                df = load_results(root)  # warn: skip the file, or read it
            except ValueError as exc:
                assert "none of the 1 asv result files" in str(exc) and str(path) in str(exc)
            else:
                assert df.attrs["skipped_files"] == [] or len(df) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


# -- the HTML report in a real browser ---------------------------------------------------------

def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)


def _screenshot(page: Path, png: Path) -> "np.ndarray":
    import matplotlib.image as mpimg

    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--window-size=1300,1800",
                           f"--screenshot={png}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert png.is_file(), proc.stderr
    return mpimg.imread(png)[..., :3]


@pytest.mark.slow
def test_html_report_shows_its_plots_in_headless_chromium(tmp_path):
    """report.html opened from disk (file://, no server) in headless Chromium (Debian's
    `chromium` package: apt-get install chromium): the embedded plots are drawn. Checked by
    the plots' palette colour (the speed lines' blue, #0072B2), which nothing else on the page
    uses: present in the screenshot, absent when the same page has its images removed."""
    import numpy as np

    if _chromium() is None:
        pytest.skip("no chromium here (Debian: apt-get install chromium)")
    out = tmp_path / "report"
    markdown_report(load_results(Path(__file__).parents[1] / "results"), out)
    page = out / "report.html"
    shot = _screenshot(page, tmp_path / "shot.png")
    blue = np.array([0x00, 0x72, 0xB2]) / 255
    n_blue = int((np.abs(shot - blue).max(axis=-1) < 0.08).sum())

    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", page.read_text()))
    bare_shot = _screenshot(bare, tmp_path / "bare.png")
    n_bare = int((np.abs(bare_shot - blue).max(axis=-1) < 0.08).sum())
    assert shot.shape[:2] == (1800, 1300)
    assert n_blue > 2000 and n_bare < 50, (n_blue, n_bare)


# -- hostile results folders: only regular files inside the folder, bounded reads -------------

def _in_time(fn, timeout=30):
    """``fn()``'s result, failing (instead of hanging the suite) when it takes > timeout s."""
    import threading
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            out["error"] = exc
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout} s (a blocking read?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_result_file_is_skipped_not_read(asv_results, tmp_path):
    """The issue's hang: a FIFO named *.json in a machine folder blocked `report` forever."""
    dst, result_file = _copy(asv_results, tmp_path)
    fifo = result_file.with_name("fifo-existing-py.json")
    os.mkfifo(fifo)
    with pytest.warns(ResultsFileWarning, match=re.escape(str(fifo)) + ".*special file"):
        df = _in_time(lambda: load_results(dst))
    assert [p for p, _ in df.attrs["skipped_files"]] == [str(fifo)]
    assert set(df["machine"]) == {"box-gpu", "box-cpu"}
    with pytest.raises(ValueError, match="symbolic link or special file"):
        _in_time(lambda: load_results(dst, errors="raise"))


@pytest.mark.parametrize("target", ["/dev/zero", "outside"])
def test_linked_machine_json_is_not_followed(asv_results, tmp_path, target):
    """A machine.json linked to a device was read without bound (its size reads as 0); one
    linked to a file outside the folder was read. Neither is opened."""
    dst, result_file = _copy(asv_results, tmp_path)
    mjson = result_file.with_name("machine.json")
    if target == "outside":
        target = tmp_path / "outside.json"
        shutil.copy(mjson, target)
    mjson.unlink()
    os.symlink(target, mjson)
    with pytest.raises(ValueError, match=re.escape(repr(str(mjson))) + " is a symbolic link"):
        _in_time(lambda: load_results(dst, errors="raise"))
    with pytest.warns(ResultsFileWarning):
        df = _in_time(lambda: load_results(dst))
    assert set(df["machine"]) == {"box-cpu"}


def test_linked_result_file_and_machine_folder_are_not_followed(asv_results, tmp_path):
    dst, result_file = _copy(asv_results, tmp_path)
    outside = tmp_path / "outside"
    shutil.copytree(dst / "box-cpu", outside)
    shutil.rmtree(dst / "box-cpu")
    os.symlink(outside, dst / "box-cpu")  # a machine folder that is a link
    moved = tmp_path / "moved.json"
    shutil.move(result_file, moved)
    os.symlink(moved, result_file)  # a result file that is a link
    with pytest.warns(ResultsFileWarning):
        with pytest.raises(ValueError, match="none of the 2 asv result files"):
            _in_time(lambda: load_results(dst))


def test_results_given_as_a_file_says_so(asv_results, tmp_path):
    _, result_file = _copy(asv_results, tmp_path)
    with pytest.raises(NotADirectoryError, match="is a file, not an asv results folder"):
        load_results(result_file)


def test_list_valued_parameters_and_machine_fields_do_not_break_the_report(asv_results,
                                                                           tmp_path):
    """A parameter stored as "[1, 2]" (or a list) and a machine.json field holding a list
    made pandas fail with 'unhashable type: list' deep inside the report; such values are
    kept as their text."""
    dst, result_file = _copy(asv_results, tmp_path)
    data = json.loads(result_file.read_text())
    at = data["result_columns"].index("params")
    for row in data["results"].values():
        if row[at]:
            row[at][0] = [f"[{i}, {i + 1}]" if j % 2 else [i] for j, i in enumerate(
                range(len(row[at][0])))]
    result_file.write_text(json.dumps(data))
    mjson = result_file.with_name("machine.json")
    machine = json.loads(mjson.read_text())
    machine["cpu"] = ["Intel", {"cores": 4}]
    mjson.write_text(json.dumps(machine))
    df = load_results(dst, errors="raise")
    gpu = df[df["machine"] == "box-gpu"]
    assert set(gpu["cpu"]) == {'["Intel", {"cores": 4}]'}
    for col in df.attrs["param_columns"]:
        df.groupby(col, dropna=False).size()  # was: TypeError unhashable type: 'list'
    md = markdown_report(df, tmp_path / "report")
    assert "box-gpu" in md


# -- strings from results files are data: escaped for the terminal, Markdown, HTML, plots ------

HOSTILE = "evil[/][bold]\x1b[31mred\x07\r\u202e <script>alert(1)</script> *b* _i_ $x | # ![a](b)"


def test_hostile_machine_name_is_escaped_everywhere(asv_results, tmp_path):
    """The issue's report: rich markup ('[/]') in a machine name crashed the report and
    escape sequences reached the terminal raw; Markdown and HTML took them as markup."""
    import io

    from rich.console import Console

    from gpulstm.report.markdown import build_report, print_report, render_html, render_markdown
    dst, result_file = _copy(asv_results, tmp_path)
    for path in result_file.parent.glob("*.json"):
        data = json.loads(path.read_text())
        if path.name == "machine.json":
            data["machine"] = HOSTILE
        else:
            data["params"]["machine"] = HOSTILE
        path.write_text(json.dumps(data))
    df = load_results(dst, errors="raise")
    assert HOSTILE in set(df["machine"])
    report = build_report(df, tmp_path / "report", this_machine=HOSTILE)
    buf = io.StringIO()
    print_report(report, Console(file=buf, width=150, force_terminal=True,
                                 color_system="truecolor"))
    term = buf.getvalue()
    assert r"evil[/][bold]\x1b[31mred\x07\r\u202e <script>" in term  # shown, as text
    assert "\x1b[31m" not in term and "\x07" not in term and "\u202e" not in term
    assert "\r" not in term
    md = render_markdown(report)
    assert not re.search(r"(?<!\\)<", md) and r"\<script>" in md and r"\*b\* \_i\_" in md
    assert "\x1b" not in md and "\n## " + HOSTILE not in md
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page and "\x1b" not in page
    for _, name in report.plots:
        assert _png_ok(tmp_path / "report" / name)


def test_outputs_are_written_whole_or_not_at_all(df, tmp_path, monkeypatch):
    """report.md was written in place: a reader at the same time saw it half written. Every
    output goes through atomic_write (temporary name in the folder, then os.replace): a write
    that fails midway leaves the previous file whole and no temporary file behind."""
    from gpulstm import _files
    out = tmp_path / "report"
    markdown_report(df, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"report.md", "report.html", "time_vs_T.png"} <= set(before)
    replaced = []
    real = os.replace
    monkeypatch.setattr(_files.os, "replace", lambda a, b: (replaced.append(os.path.basename(b)),
                                                            real(a, b))[1])
    markdown_report(df, out)
    assert set(before) <= set(replaced)  # every output file was renamed into place
    monkeypatch.setattr(_files.os, "replace", real)

    class Boom(Exception):
        pass
    with pytest.raises(Boom):
        with _files.atomic_write(out / "report.md") as f:
            f.write("half")
            raise Boom
    assert (out / "report.md").read_bytes() == before["report.md"]
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_memory_vs_T_plot_of_the_recompute_benchmark(tmp_path):
    """The report's memory-vs-T figure: traced and process peaks of RecomputeMemory against T,
    one line per recompute setting; refused (ValueError) without such rows."""
    import pandas as pd
    from gpulstm.report.plots import plot_memory_vs_T
    rows = []
    for T, full, rc in [(1000, 11.3, 6.6), (10000, 112.4, 16.8), (100000, 1124.0, 127.0)]:
        for flag, v in ((False, full), (True, rc)):
            rows.append({"machine": "m", "benchmark": "recompute.RecomputeMemory.track_traced_peak_mib",
                         "T": T, "recompute": flag, "value": v, "status": "ok"})
            rows.append({"machine": "m", "benchmark": "recompute.RecomputeMemory.peakmem_training_step",
                         "T": T, "recompute": flag, "value": (200 + v) * 2**20, "status": "ok"})
    fig = plot_memory_vs_T(pd.DataFrame(rows), tmp_path / "memory_vs_T.png")
    assert (tmp_path / "memory_vs_T.png").stat().st_size > 1000
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 and sorted(tuple(ln.get_ydata()) for ln in lines)[0] == (6.6, 16.8, 127.0)
    with pytest.raises(ValueError, match="no RecomputeMemory rows"):
        plot_memory_vs_T(pd.DataFrame(rows[:2]), tmp_path / "x.png")

"""The ``gpulstm`` command through its installed entry point, benchrun, and the committed results."""
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

import gpulstm.report as report

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
GPULSTM = pathlib.Path(sys.executable).parent / "gpulstm"  # console script of the install


def run(*args, timeout=300, rc=0, cwd=REPO):
    cmd = [str(GPULSTM)] if GPULSTM.exists() else [sys.executable, "-m", "gpulstm.cli"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert p.returncode == rc, p.stdout + p.stderr
    return p


def test_entry_point_is_installed():
    assert GPULSTM.exists(), f"no console script at {GPULSTM}: is gpulstm installed (pip install -e .)?"


def test_info_lists_backends_and_reasons():
    out = run("info").stdout
    assert "numpy     usable" in out
    assert "cupy" in out and "auto   ->" in out
    assert "NVRTC" in out


def test_help_and_info_defer_heavy_imports():
    """`gpulstm --help` and `gpulstm info` import neither PyTorch, pandas, matplotlib nor asv
    (PyTorch alone takes seconds to import)."""
    code = ("import sys, contextlib, io\n"
            "from gpulstm import cli\n"
            "for argv in (['--help'], ['info'], ['memory', '--help'], ['main', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n"
            "            cli.main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'asv') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


def test_every_option_has_help_text_and_its_default():
    from gpulstm.cli import build_parser
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "command")
    assert set(sub.choices) == {"info", "main", "bench", "report", "html", "memory"}
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help, f"gpulstm {name} {action.option_strings}: no help text"
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if action.default not in (None, False) and action.dest != "help" and action.help:
                assert "default" in action.help or f"(default: {action.default})" in text, \
                    f"gpulstm {name} {action.option_strings}: default not shown"


@pytest.mark.parametrize("args, message", [
    (["memory", "--T", "10,abc"], "--T must be a comma-separated list; got '10,abc'"),
    (["memory", "--cell", "lstm_fb1,lsmt", "--T", "10", "--budget", "1", "--workers", "0"],
     "unknown cell 'lsmt'"),
    (["memory", "--backend", "nope", "--T", "10"], "unknown backend 'nope'"),
    (["memory", "--seeds", "0"], "--seeds must be >= 1"),
    (["report", "/nonexistent/results"], "does not exist"),
    (["report", "--no-reference", "--out", "/tmp/x"], None),  # empty: see below
    (["bogus"], "invalid choice"),
    (["bench", "--dry-run", "--machine", "../../x"], "machine name '../../x' is not usable"),
    (["bench", "--dry-run", "--machine", "a/b"], "machine name 'a/b' is not usable"),
    (["bench", "--dry-run", "--bench", "speed[("], "--bench 'speed[(' is not a regular"),
    (["report", "FILE", "--no-reference"], "is a file, not an asv results folder"),
    (["report", "--out", "FILE"], "cannot write into the output folder"),
    (["report", "--out", "FILE/sub"], "cannot write into the output folder"),
    (["report", "--out", "READONLY/sub"], "cannot write into the output folder"),
    (["report", "UNREADABLE", "--no-reference"], "cannot list the results folder"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path):
    if message is None:  # an empty results folder
        empty = tmp_path / "empty"
        empty.mkdir()
        args, message = ["report", str(empty), "--no-reference"], "no asv result files"
    (tmp_path / "FILE").write_text("not a folder")
    for name, mode in (("READONLY", 0o555), ("UNREADABLE", 0o000)):
        (tmp_path / name).mkdir()
        os.chmod(tmp_path / name, mode)
    if os.geteuid() == 0 and any(a.startswith(("READONLY", "UNREADABLE")) for a in args):
        pytest.skip("root reads and writes any folder")
    args = [str(tmp_path / a) if a.split("/")[0] in ("FILE", "READONLY", "UNREADABLE") else a
            for a in args]
    p = run(*args, rc=2, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    # nothing trained before the error: a typo in the second cell is found first
    assert "Adam updates" not in p.stdout


def test_debug_shows_the_traceback():
    p = run("report", "/nonexistent/results", "--debug", rc=1)
    assert "Traceback" in p.stderr and "UserError" in p.stderr


def test_committed_results_load_with_every_machine():
    df = report.load_results(RESULTS, errors="raise")
    machines = {p.name for p in RESULTS.iterdir() if (p / "machine.json").is_file()}
    assert machines and set(df["machine"]) == machines
    assert (df["status"] == "ok").sum() > 0


def test_report_of_the_committed_results(tmp_path):
    out = run("report", str(RESULTS), "--no-reference", "--out", str(tmp_path)).stdout
    for text in ("Speed", "ms median [IQR]", "×torch", "µs/step", "GFLOP/s", "peak MiB",
                 "Long-range memory", "report.html"):
        assert text in out, text
    pngs = sorted(tmp_path.glob("*.png"))
    assert {p.name for p in pngs} >= {"time_vs_T.png", "ratio_vs_T.png", "gradient_flow.png"}
    for p in pngs:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "## Speed" in md and "## Long-range memory" in md and "| ms median [IQR] |" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(pngs)


def test_report_compares_this_run_with_the_reference_machines(tmp_path):
    """A run on a machine named like a reference machine is told apart as "(this run)" and set
    against the reference; a bad file in it is skipped with a warning, not fatal."""
    mine = tmp_path / "mine"
    shutil.copytree(RESULTS / "vm", mine / "vm")
    shutil.copy(RESULTS / "benchmarks.json", mine / "benchmarks.json")
    (mine / "vm" / "deadbeef-broken.json").write_text("{not json")
    p = run("report", str(mine), "--out", str(tmp_path / "rep"))
    assert "vm (this run): SequenceLength" in p.stdout
    assert "against the reference machines" in p.stdout and "time here / there" in p.stdout
    assert "deadbeef-broken.json" in p.stderr and "1 unreadable result file" in p.stderr
    run("report", str(mine), "--strict", "--out", str(tmp_path / "rep"), rc=2)


def test_report_says_when_this_run_and_a_reference_share_a_name_not_hardware(tmp_path, capsys):
    """The issue's report: "vm (this run)" (an Intel VM) was compared with the reference "vm"
    (an AMD EPYC) as if one machine had got slower; the report now says they differ."""
    from gpulstm import cli
    from gpulstm.report.markdown import build_report, render_markdown
    mine = tmp_path / "mine"
    shutil.copytree(RESULTS / "vm", mine / "vm")
    shutil.copy(RESULTS / "benchmarks.json", mine / "benchmarks.json")
    df, this = cli.report_frame(str(mine), str(RESULTS))
    assert this == "vm (this run)" and df.attrs["notes"] == []  # same hardware: no note
    mjson = mine / "vm" / "machine.json"
    info = json.loads(mjson.read_text())
    info["cpu"] = "Intel(R) Xeon(R) Test CPU"
    mjson.write_text(json.dumps(info))
    df, this = cli.report_frame(str(mine), str(RESULTS))
    (note,) = df.attrs["notes"]
    assert "share a name but not their hardware" in note and "Intel(R) Xeon(R) Test CPU" in note
    assert "share a name but not their hardware" in capsys.readouterr().err
    md = render_markdown(build_report(df, tmp_path / "rep", this_machine=this))
    assert "Note: this run and the reference machine 'vm' share a name" in md


def test_memory_runs_a_small_experiment():
    out = run("memory", "--task", "adding", "--cell", "lstm_fb1,rnn_tanh", "--T", "10",
              "--seeds", "1", "--budget", "20", "--workers", "0", "--backend", "numpy").stdout
    assert "adding: Adam updates to criterion" in out
    assert out.count("> 20") == 2  # one row per cell, neither solves in 20 updates


def test_help_lists_commands():
    out = run("--help").stdout
    for cmd in ("info", "bench", "report", "memory", "main", "html"):
        assert cmd in out


# -- benchrun ----------------------------------------------------------------------------------

def test_benchrun_never_uses_a_config_found_in_a_parent_folder(tmp_path, monkeypatch):
    from gpulstm import benchrun
    planted = tmp_path / "asv.conf.json"
    planted.write_text(json.dumps({"version": 1, "repo": ".", "benchmark_dir": "evil"}))
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    assert benchrun.find_config() == str(REPO / "asv.conf.json")
    assert benchrun.find_config(str(planted)) == str(planted)  # only when named
    with pytest.raises(benchrun.UserError, match="no such file"):
        benchrun.find_config(str(tmp_path / "absent.json"))


def test_benchrun_writes_to_its_own_results_folder(monkeypatch, capsys, tmp_path):
    pytest.importorskip("asv")
    from gpulstm import benchrun
    monkeypatch.setattr(benchrun, "gpu_info", lambda: {})
    monkeypatch.setattr(benchrun, "library_versions", lambda *a: {})
    monkeypatch.chdir(tmp_path)
    assert benchrun.main(["--dry-run", "--machine", "ci"]) == 0
    out = capsys.readouterr().out
    assert f"results in {REPO / '.gpulstm' / 'results'}" in out
    assert benchrun.main(["--dry-run", "--machine", "ci", "--results", "mine"]) == 0
    assert f"results in {tmp_path / 'mine'}" in capsys.readouterr().out
    # the asv config it runs with: the project's, results_dir replaced, paths absolute
    conf = json.loads(pathlib.Path(benchrun.write_config(
        str(REPO / "asv.conf.json"), str(tmp_path / "mine"), str(tmp_path))).read_text())
    assert conf["results_dir"] == str(tmp_path / "mine")
    assert conf["benchmark_dir"] == str(REPO / "bench") and conf["repo"] == str(REPO)


def test_commit_results_refuses_a_dirty_tree_and_another_machines_name(monkeypatch, capsys,
                                                                       tmp_path):
    pytest.importorskip("asv")
    from gpulstm import benchrun
    monkeypatch.setattr(benchrun, "gpu_info", lambda: {})
    monkeypatch.setattr(benchrun, "library_versions", lambda *a: {})
    monkeypatch.setattr(benchrun, "git_state", lambda root: ("0" * 40, ["gpulstm/cli.py"]))
    assert benchrun.main(["--commit-results", "--dry-run", "--machine", "ci"]) == 2
    assert "clean working tree" in capsys.readouterr().err

    (tmp_path / "vm").mkdir()
    (tmp_path / "vm" / "machine.json").write_text(json.dumps(
        {"machine": "vm", "cpu": "Other CPU", "num_cpu": "64", "arch": "x86_64"}))
    info = benchrun.machine_info("vm", {}, {})
    with pytest.raises(benchrun.UserError, match="belongs to a different machine"):
        benchrun.check_machine_name(str(tmp_path), info)
    same = {k: info[k] for k in ("machine", "cpu", "num_cpu", "arch")}
    (tmp_path / "vm" / "machine.json").write_text(json.dumps(same))
    benchrun.check_machine_name(str(tmp_path), info)  # this machine: fine
    benchrun.check_machine_name(str(tmp_path), dict(info, machine="new"))  # a new name: fine


def test_default_machine_name_never_takes_a_reference_machine_of_other_hardware(
        monkeypatch, capsys, tmp_path):
    """The issue's report: an Intel VM named its run "vm", the committed AMD reference's name,
    and the report compared the two as one machine. The default name gets the CPU appended;
    an explicit --machine of other hardware is still refused by --commit-results."""
    pytest.importorskip("asv")
    from gpulstm import benchrun
    monkeypatch.setattr(benchrun, "gpu_info", lambda: {})
    monkeypatch.setattr(benchrun, "library_versions", lambda *a: {})
    monkeypatch.setattr(benchrun, "default_machine_name", lambda gpu=None: "vm")
    here = benchrun.machine_info("vm", {}, {})
    monkeypatch.setattr(benchrun, "machine_info", lambda name, *a: dict(
        here, machine=name, cpu="Intel(R) Xeon(R) Test CPU @ 2.00GHz"))
    ref = json.loads((RESULTS / "vm" / "machine.json").read_text())
    assert ref["cpu"] != "Intel(R) Xeon(R) Test CPU @ 2.00GHz"
    assert benchrun.main(["--dry-run", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "machine vm-intel-r-xeon-r-test-cpu" in out, out


ASV_LINES = """\
· Discovering benchmarks
· Running 3 total benchmarks (1 commits * 1 environments * 3 benchmarks)
[ 0.00%] · For gpulstm commit 2b81567a <main>:
[ 0.00%] ·· Benchmarking existing-py_venv_bin_python
[16.67%] ··· Setting up memory:177                                          ok
[33.33%] ··· Running (speed.SequenceLength.time_forward--).
[66.67%] ··· speed.SequenceLength.time_forward                               ok
[66.67%] ··· ===== ========== ============ ======
                10   rnn_tanh    572±10μs    n/a
[66.67%] ···· For parameters: 10, 'rnn_tanh', 'cupy'
               asv: skipped: NotImplementedError("backend 'cupy' unavailable: no CuPy")

               For parameters: 10, 'lstm', 'cupy'
               asv: skipped: NotImplementedError("backend 'cupy' unavailable: no CuPy")
               For parameters: 10, 'lstm', 'torch-cudnn'
               asv: skipped: NotImplementedError('torch-cudnn unavailable: no CUDA device')
"""


def test_progress_follows_asv_and_summarises_skips():
    from gpulstm.benchrun import AsvProgress
    stream = io.StringIO()
    p = AsvProgress(stream)
    seen = []
    for line in ASV_LINES.splitlines():
        p.feed(line)
        seen.append((p.percent, p.step))
    assert (16.67, "Setting up memory:177") in seen
    assert (33.33, "Running speed.SequenceLength.time_forward") in seen
    assert p.percent == 66.67 and p.step == "done speed.SequenceLength.time_forward"
    assert p.skip_summary() == ["2 points skipped: backend 'cupy' unavailable: no CuPy",
                                "1 point skipped: torch-cudnn unavailable: no CUDA device"]
    assert "[ 66.7%] 2/3 benchmarks," in p.status_line() and "left" in p.status_line()
    assert stream.getvalue() == ""  # asv's tables and skip notices are not printed


def test_progress_shows_asv_text_as_data():
    """Benchmark names, parameters and skip reasons from asv reach the terminal as text: rich
    markup in them ([/]) neither raises nor styles, escape sequences are written escaped."""
    from rich.console import Console
    from gpulstm.benchrun import AsvProgress
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with AsvProgress(out, console=console) as p:
        p.feed("Running 2 total benchmarks (1 commits * 1 environments * 2 benchmarks)")
        p.feed("[ 50.00%] ··· Running speed.X.time_y('[/]', '[bold]\x1b[2J')")
        p.feed("    asv: skipped: NotImplementedError('gone [/] \x1b]0;title\x07')")
        assert "[/]" in p.step and "[bold]" in p.step and "\\x1b[2J" in p.step
        assert "\x1b" not in p.step
        p._bar.refresh()
    shown = out.getvalue()
    assert "[/]" in shown and "[bold]" in shown
    assert "\x1b[2J" not in shown and "\x07" not in shown  # the raw sequences never
    assert p.skip_summary() == ["1 point skipped: gone [/] \\x1b]0;title\\x07"]


def test_progress_prints_while_asv_is_silent():
    """Without a terminal, a status line every `every` seconds, also while asv prints nothing
    (a long setup_cache)."""
    from gpulstm.benchrun import AsvProgress
    stream = io.StringIO()
    with AsvProgress(stream, every=0.05) as p:
        p.feed("[ 4.00%] ··· Setting up memory:177")
        time.sleep(0.4)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 4 and all("Setting up memory:177" in line for line in lines)


def test_stopping_benchrun_stops_asvs_processes(tmp_path):
    """SIGTERM to a benchrun run (e.g. a timeout) ends the benchmark processes it started
    (asv runs in its own process group); none is left running."""
    child = tmp_path / "child.pid"
    fake_asv = ("import subprocess, sys, time\n"
                f"p = subprocess.Popen(['sleep', '120'])\n"
                f"open({str(child)!r}, 'w').write(str(p.pid))\n"
                "print('[ 10.00%] ··· Setting up memory:1', flush=True)\n"
                "time.sleep(120)\n")
    runner = ("import sys\n"
              "from gpulstm import benchrun\n"
              f"benchrun.run_asv([sys.executable, '-c', {fake_asv!r}], '.', dict(__import__('os').environ),"
              f" {str(tmp_path / 'log.txt')!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", runner], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not child.exists() or not child.read_text():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    pid = int(child.read_text())
    proc.terminate()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        # a zombie whose parent is gone is reaped by init; check its state
        try:
            if pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, 9)
        pytest.fail("the benchmark's child process outlived benchrun")


@pytest.mark.slow
def test_main_job_on_a_tiny_grid_leaves_the_checkout_clean(tmp_path):
    """`gpulstm main` end to end on one small benchmark: progress lines, the skip summary, the
    report with this run beside the reference machine, and no tracked file touched."""
    def status():
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                              cwd=REPO, capture_output=True, text=True).stdout
    before = status()
    p = run("main", "--bench", "SequenceLength.time_forward(?!_)", "--machine", "tiny-test",
            "--results", str(tmp_path / "results"), "--out", str(tmp_path / "report"),
            timeout=1800)
    assert "asv [" in p.stdout and "elapsed" in p.stdout
    assert "points skipped: backend 'cupy' unavailable" in p.stdout
    assert "tiny-test (this run): SequenceLength" in p.stdout
    assert "against the reference machines" in p.stdout
    assert (tmp_path / "report" / "report.html").is_file()
    assert (tmp_path / "results" / "tiny-test" / "machine.json").is_file()
    assert "Traceback" not in p.stdout + p.stderr
    assert status() == before


def test_html_builds_asvs_site_without_touching_the_checkout(tmp_path):
    """asv publish of the committed results (two commits of vm, with an infinite track value:
    asv's step detection fails on those unless they are passed as missing)."""
    p = run("html", "--results", str(RESULTS), "--out", str(tmp_path / "site"), timeout=300)
    assert (tmp_path / "site" / "index.html").is_file()
    assert "asv preview --html-dir" in p.stdout
    run("html", "--results", str(tmp_path / "absent"), rc=2)

"""The ``gpulstm`` command through its installed entry point, and the committed results."""
import os
import pathlib
import subprocess
import sys

import pytest

import gpulstm.report as report

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
GPULSTM = pathlib.Path(sys.executable).parent / "gpulstm"  # console script of the install


def run(*args, timeout=300):
    cmd = [str(GPULSTM)] if GPULSTM.exists() else [sys.executable, "-m", "gpulstm.cli"]
    p = subprocess.run(cmd + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_entry_point_is_installed():
    assert GPULSTM.exists(), f"no console script at {GPULSTM}: is gpulstm installed (pip install -e .)?"


def test_info_lists_backends_and_reasons():
    out = run("info")
    assert "numpy     usable" in out
    assert "cupy" in out and "auto   ->" in out
    assert "NVRTC" in out


def test_committed_results_load_with_every_machine():
    df = report.load_results(RESULTS)
    machines = {p.name for p in RESULTS.iterdir() if (p / "machine.json").is_file()}
    assert machines and set(df["machine"]) == machines
    assert (df["status"] == "ok").sum() > 0


def test_report_prints_both_tables_and_writes_plots(tmp_path):
    out = run("report", str(RESULTS), "--out", str(tmp_path))
    assert "## Speed" in out and "## Long-range memory" in out
    assert "| ratio" in out or "ratio |" in out
    pngs = sorted(tmp_path.glob("*.png"))
    assert {p.name for p in pngs} >= {"time_vs_T.png", "gradient_flow.png"}
    for p in pngs:
        assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report.md").read_text() in out


def test_memory_runs_a_small_experiment():
    out = run("memory", "--task", "adding", "--cell", "lstm_fb1,rnn_tanh", "--T", "10",
              "--seeds", "1", "--budget", "20", "--workers", "0", "--backend", "numpy")
    assert "adding: Adam updates to criterion" in out
    assert out.count("> 20") == 2  # one row per cell, neither solves in 20 updates


def test_help_lists_commands():
    out = run("--help")
    for cmd in ("info", "bench", "report", "memory", "main"):
        assert cmd in out

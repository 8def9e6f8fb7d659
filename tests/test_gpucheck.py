"""The prepared GPU check (gpulstm.gpucheck, make gpu-check): its dry run on the CPU end to end
(the same script the GPU runs), the evidence it leaves (<= 8 files with safe names), loud
failures (a wrong kernel, no GPU, a hung section) and gpu-import into results/ only."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpulstm import gpucheck
from gpulstm.perfmodel import device_for

ROOT = Path(__file__).resolve().parent.parent
SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def _run(args, cwd=ROOT, env=None, timeout=280):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "gpulstm.gpucheck", *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def dry_out(tmp_path_factory):
    """One dry run of the whole check (about 10 s on 2 cores), shared by the tests below."""
    out = tmp_path_factory.mktemp("gpucheck") / "out"
    git = ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=all"]
    before = subprocess.run(git, capture_output=True, text=True).stdout
    r = _run(["run", "--dry", str(out), "--commit", "0123abcd"])
    after = subprocess.run(git, capture_output=True, text=True).stdout
    return out, r, before, after


def test_dry_run_passes_and_leaves_at_most_8_safe_files(dry_out):
    out, r, before, after = dry_out
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = [p for p in out.rglob("*")]
    assert all(p.is_file() and p.parent == out for p in files)  # no folders
    names = sorted(p.name for p in files)
    assert names == sorted(gpucheck.FILES) and len(names) <= 8
    assert all(SAFE.match(n) for n in names)
    assert all(p.stat().st_size < 16 * 2**20 for p in files)
    assert before == after  # nothing written into the tree (tracked or not)
    m = json.loads((out / "manifest.json").read_text())
    assert m["passed"] and m["dry"] and m["commit"] == "0123abcd"
    assert set(m["sections"]) == {"env", "correctness", "speed", "sanitizer"}
    assert all(s["status"] == "ok" for s in m["sections"].values())
    assert set(m["files"]) == set(gpucheck.FILES)
    summary = (out / "summary.txt").read_text()
    assert summary in r.stdout and "RESULT: PASSED" in summary and "DRY RUN" in summary


def test_dry_run_checks_every_cell_and_algorithm(dry_out):
    out = dry_out[0]
    rows = json.loads((out / "correctness.json").read_text())["rows"]
    got = {(r["case"], r["dtype"], r["impl"]) for r in rows}
    for case in gpucheck.DRY_CASES:
        for impl in gpucheck.ALGOS + ("persistent+limited",):
            assert (case[0], "float32", impl) in got
    recompute = [r for r in rows if r.get("check", "").startswith("recompute")]
    assert {(r["case"], r["impl"]) for r in recompute} == {
        (c[0], impl) for c in gpucheck.RECOMPUTE_CASES for impl in gpucheck.RECOMPUTE_IMPLS}
    assert all(r["ok"] and r["differ"] == [] for r in recompute), recompute
    for r in rows:
        if r in recompute:
            continue
        assert r["ok"] and r["worst"] < gpucheck.THRESHOLD[r["dtype"]]
        for q in ("y", "h_n", "dx", "dh0", "grad.weight_hh_l0"):
            assert r["vs_float64"][q] is not None
        if r["dtype"] == "float32" and r["cls"] not in gpucheck.NO_TORCH_TWIN:
            assert set(r["vs_cudnn"]) == set(r["vs_float64"])
        want = {"auto": "persistent", "persistent+limited": "fused"}.get(r["impl"], r["impl"])
        if r["cls"] in gpucheck.NO_GRAPHS and want == "fused+graphs":
            want = "fused"
        assert r["algo_ran"] == r["expected_ran"] == want, r
    launches = json.loads((out / "launches.json").read_text())
    lstm = launches["lstm/float32/persistent"]["kernels"]
    assert {k["kernel"] for k in lstm} == {"persistent_forward<LstmCell>", "persistent_backward<LstmCell>"}
    assert all(k["cooperative"] and k["shared"] > 0 for k in lstm)
    for cid, struct in (("cifg", "CifgCell"), ("indrnn", "IndRnnCell")):  # plug-in cells
        ks = {k["kernel"] for k in launches[f"{cid}/float32/fused"]["kernels"]}
        assert ks == {f"fused_forward<{struct}>", f"fused_backward<{struct}>"}
    assert launches["gru/float32/fused+graphs"]["graph_replays"] >= 2
    limited = launches["lstm/float32/persistent+limited"]
    assert {k["kernel"] for k in limited["kernels"]} == {"fused_forward<LstmCell>", "fused_backward<LstmCell>"}
    assert [f["blocks_per_sm"] for f in limited["persistent_fallbacks"]] == [0, 0]


def test_dry_run_speed_rows_carry_the_model_and_the_algorithm_that_ran(dry_out):
    out = dry_out[0]
    doc = json.loads((out / "algos.json").read_text())
    assert "MODEL" in doc["model"] and not doc["skipped"]
    rows = doc["rows"]
    assert {(r["T"], r["B"], r["H"]) for r in rows} == set(gpucheck.DRY_SPEED_SHAPES)
    for r in rows:
        assert "error" not in r, r
        assert len(r["samples_ms"]) == r["reps"] >= 3
        lo, mid, hi = (r[f"forward_backward{k}_ms"] for k in ("_min", "", "_max"))
        assert lo <= mid <= hi
        if r["impl"] in ("stepwise", "fused", "fused+graphs", "persistent", "auto"):
            assert r["model_us_per_step"] > 0 and r["measured_over_model"] > 0
            assert r["ran"] == r["impl"].replace("auto", "persistent")
            assert r["max_abs_diff_vs_cudnn"] < 1e-4
    # the report's GPU section reads the file as it is
    from gpulstm.report.gpu import gpu_loop_table, load_algo_runs
    runs = load_algo_runs(out.parent)
    assert len(runs) == len(rows)
    table, _ = gpu_loop_table(runs)
    assert len(table) == len(rows)


def test_gpu_import_writes_only_under_results(dry_out, tmp_path):
    """make gpu-import in a temporary copy: the returned folder lands in
    results/gpu/<card>-<commit>/, byte for byte, and nothing else changes."""
    out = dry_out[0]
    repo = tmp_path / "copy"
    (repo / "results").mkdir(parents=True)
    (repo / "results" / "keep.txt").write_text("committed")
    (repo / "Makefile").write_text("x")
    src_before, repo_before = _tree(out), _tree(repo)
    r = _run(["import", str(out), "--allow-dry"], cwd=repo)
    assert r.returncode == 0, r.stderr
    dest = repo / "results" / "gpu" / "emulated-cpu-0123abcd"
    assert Path(r.stdout.strip()).resolve() == dest.resolve()
    after = _tree(repo)
    new = {k: v for k, v in after.items() if k not in repo_before}
    assert all(k.startswith("results/gpu/emulated-cpu-0123abcd/") for k in new)
    assert {k: after[k] for k in repo_before} == repo_before
    assert {Path(k).name: v for k, v in new.items()} == src_before
    assert _tree(out) == src_before
    from gpulstm.report.gpu import load_algo_runs
    assert set(load_algo_runs(repo / "results")["run"]) == {"gpu/emulated-cpu-0123abcd"}
    # refused: again (never overwritten), a dry run without --allow-dry, an unknown commit
    r = _run(["import", str(out), "--allow-dry"], cwd=repo)
    assert r.returncode == 2 and "exists already" in r.stderr
    r = _run(["import", str(out)], cwd=repo)
    assert r.returncode == 2 and "dry run" in r.stderr
    assert _tree(repo) == after


def test_gpu_import_refuses_foreign_files_and_unknown_commits(dry_out, tmp_path):
    import shutil
    src = tmp_path / "back"
    shutil.copytree(dry_out[0], src)
    m = json.loads((src / "manifest.json").read_text())
    m["commit"] = "unknown"
    (src / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="COMMIT="):
        gpucheck.import_run(src, tmp_path / "results", allow_dry=True)
    dest = gpucheck.import_run(src, tmp_path / "results", commit="feed01", allow_dry=True)
    assert dest.name == "emulated-cpu-feed01"
    (src / "stray.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="stray.bin"):
        gpucheck.import_run(src, tmp_path / "r2", commit="feed02", allow_dry=True)
    assert not (tmp_path / "r2").exists()


def test_run_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="new or empty"):
        gpucheck.run_check(tmp_path, dry=True)


def test_a_wrong_kernel_fails_the_correctness_section(monkeypatch, tmp_path):
    """The thresholds bite: an output off by 1e-3 (relative), or one NaN, fails its row."""
    real = gpucheck.run_ours
    calls = {"n": 0}

    def broken(m, p, dtype):
        out = real(m, p, dtype)
        if m.ex.name != "numpy":  # the tested execution, not the float64 reference
            calls["n"] += 1
            if calls["n"] % 2:
                out["dx"] = out["dx"] + 1e-3 * max(1.0, np.abs(out["dx"]).max())
            else:
                out["grad.weight_hh_l0"].flat[3] = np.nan
        return out
    monkeypatch.setattr(gpucheck, "run_ours", broken)
    monkeypatch.setattr(gpucheck, "DRY_CASES", gpucheck.DRY_CASES[:1])
    ctx = gpucheck.Context(tmp_path, True, 1e12)
    assert gpucheck.section_correctness(ctx) == 1
    rows = json.loads((tmp_path / "correctness.json").read_text())["rows"]
    assert rows and not any(r["ok"] for r in rows)
    assert any(r["vs_float64"]["grad.weight_hh_l0"] is None for r in rows)  # NaN: inf -> null
    assert any(r["vs_float64"]["dx"] > 5e-4 for r in rows)


@pytest.mark.skipif(gpucheck.find_sanitizer() is not None or
                    __import__("importlib").util.find_spec("cupy") is not None,
                    reason="a GPU machine: the real check would run")
def test_no_gpu_is_a_failure_not_a_skip(tmp_path):
    r = _run(["run", str(tmp_path / "o"), "--budget-s", "60", "--commit", "c0ffee"])
    assert r.returncode == 1
    out = tmp_path / "o"
    m = json.loads((out / "manifest.json").read_text())
    assert not m["passed"] and all(s["status"] != "ok" for s in m["sections"].values())
    env = json.loads((out / "env.json").read_text())
    assert any("no GPU through CuPy" in p for p in env["problems"])
    assert "compute-sanitizer not found" in (out / "sanitizer.txt").read_text()
    assert "RESULT: FAILED" in (out / "summary.txt").read_text()
    assert {p.name for p in out.iterdir()} <= set(gpucheck.FILES)


def test_a_hung_section_is_killed_at_its_limit(tmp_path, monkeypatch):
    """A section that never ends (a deadlocked kernel, say) costs its own limit only."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nsleep 60 &\nwait\n")  # a child too: the whole group goes
    fake.chmod(0o755)
    monkeypatch.setattr(gpucheck.sys, "executable", str(fake))
    import time
    t0 = time.monotonic()
    with open(tmp_path / "log.txt", "w") as log:
        rc = gpucheck._run_child("speed", tmp_path, True, time.time() + 1, 1.0, log)
    assert rc == "timeout" and time.monotonic() - t0 < 10


def test_cap_keeps_head_and_tail(tmp_path):
    p = tmp_path / "log.txt"
    p.write_bytes(b"a" * 3000 + b"b" * 3000)
    gpucheck._cap(p, limit=1000)
    data = p.read_bytes()
    assert len(data) <= 1000 and data.startswith(b"a") and data.endswith(b"b") and b"cut" in data


def test_card_slug_and_model_device():
    assert gpucheck.card_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert SAFE.match(gpucheck.card_slug("NVIDIA H200 / x (y)"))
    assert device_for("NVIDIA H100 80GB HBM3", 132) == "H100"
    assert device_for("NVIDIA H200", 132) == "H200"
    assert device_for("NVIDIA H100 PCIe", 114) is None  # other figures: no model
    assert device_for("NVIDIA H100 80GB HBM3", 114) is None  # a queried SM count unlike ours
    assert device_for("NVIDIA A100-SXM4-80GB") is None
    assert device_for("NVIDIA GH200 480GB") is None


def test_the_check_reports_a_persistent_fallback(rng):
    """A persistent launch the occupancy guard refuses shows in the check's launch record as
    the fallback, and the algorithm that ran as fused."""
    import gpulstm as gl
    from gpulstm.backends import get_backend
    m = gl.LSTM(4, 37, backend="emulated", dtype="float32", seed=0)
    ex = get_backend("emulated", "persistent").with_device_limits(smem_per_sm=4096)
    object.__setattr__(m, "ex", ex)  # past the fixed-attribute guard
    rec = gpucheck.instrument(m)
    y, _ = m(rng.standard_normal((3, 2, 4)).astype(np.float32))
    m.backward(np.ones_like(y))
    s = gpucheck.summarize_launches(rec)
    assert s["algo_ran"] == "fused"
    assert [f["kernel"] for f in s["persistent_fallbacks"]] == ["persistent_forward<LstmCell>",
                                                                "persistent_backward<LstmCell>"]
    assert all(f["blocks_per_sm"] == 0 for f in s["persistent_fallbacks"])


def test_the_persistent_kernels_run_last():
    """The one place a kernel can hang (a grid barrier) comes after every other row, so a hang
    killed at the section's limit loses the fewest rows; the target shapes come first."""
    runs = [impl for _, impl in gpucheck.CORRECTNESS_RUNS]
    first = runs.index("persistent")
    assert set(runs[first:]) == {"persistent", "auto"} and "persistent" not in runs[:first]
    assert set(gpucheck.ALGOS) | {"persistent+limited"} == set(runs) == set(gpucheck.EXPECTED_RAN)
    order = gpucheck.speed_order(gpucheck.SPEED_SHAPES)
    impls = [i for _, i in order]
    late = impls.index("persistent")
    assert set(impls[late:]) == {"persistent", "auto"}
    assert order[0] == ((1000, 8, 512), "cudnn") and order[late][0] == (1000, 8, 512)
    want = [(s, i) for s in gpucheck.SPEED_SHAPES for i in gpucheck.SPEED_IMPLS]
    assert sorted(order) == sorted(want)


def _fake_sanitizer(tmp_path, monkeypatch, rc, errors):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    cs = bindir / "compute-sanitizer"
    cs.write_text(f'#!/bin/sh\necho "args: $*"\necho "========= ERROR SUMMARY: {errors} errors"\n'
                  f"exit {rc}\n")
    cs.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return cs


@pytest.mark.parametrize("rc, errors, want", [(0, 0, 0), (99, 2, 1)])
def test_sanitizer_section_plumbing(tmp_path, monkeypatch, rc, errors, want):
    """The GPU path of the sanitizer section (a stand-in compute-sanitizer on PATH): memcheck
    runs the sanitize-case child of this module; its exit status decides; all in
    sanitizer.txt, whose ERROR SUMMARY the summary quotes."""
    cs = _fake_sanitizer(tmp_path, monkeypatch, rc, errors)
    out = tmp_path / "out"
    out.mkdir()
    assert gpucheck.find_sanitizer() == str(cs)
    assert gpucheck.section_sanitizer(gpucheck.Context(out, False, 1e12)) == want
    text = (out / "sanitizer.txt").read_text()
    assert f"$ {cs} --tool memcheck --error-exitcode 99" in text
    assert "-m gpulstm.gpucheck --section sanitize-case --out" in text
    assert f"exit status: {rc}" in text
    manifest = {"what": "x", "commit": "c", "commit_source": "t", "source_digest": "d",
                "sections": {"sanitizer": {"status": "ok", "seconds": 1}}}
    assert f"sanitizer: ERROR SUMMARY: {errors} errors" in gpucheck.summarize(out, manifest)


def test_env_section_on_a_stand_in_gpu(tmp_path, monkeypatch):
    """The GPU path of the env section, on a stand-in CuPy: the card's facts, the versions,
    TF32 read back off, and the model's device from the card's name and SM count."""
    import types
    props = {"name": b"NVIDIA H100 80GB HBM3", "major": 9, "minor": 0,
             "multiProcessorCount": 132, "l2CacheSize": 50 * 2**20,
             "sharedMemPerBlockOptin": 227 * 1024, "sharedMemPerMultiprocessor": 228 * 1024,
             "totalGlobalMem": 80 * 2**30, "cooperativeLaunch": 1}
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda d: props,
                                    runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000)
    fake = types.SimpleNamespace(__version__="14.2.0", cuda=types.SimpleNamespace(
        runtime=runtime, nvrtc=types.SimpleNamespace(getVersion=lambda: (13, 0))))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    import gpulstm.backends as backends
    monkeypatch.setattr(backends, "get_backend", lambda name, *a: types.SimpleNamespace(
        device_limits=lambda: (132, 227 * 1024)))
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi here
    monkeypatch.setenv("GPULSTM_COMMIT", "abc123")
    rc = gpucheck.section_env(gpucheck.Context(tmp_path, False, 1e12))
    env = json.loads((tmp_path / "env.json").read_text())
    card = env["card"]
    assert card["name"] == "NVIDIA H100 80GB HBM3" and card["sm_count"] == 132
    assert card["compute_capability"] == "9.0" and card["smem_per_block_optin"] == 227 * 1024
    assert env["cuda"] == {"cupy": "14.2.0", "runtime": 13000, "driver": 13000, "nvrtc": [13, 0]}
    assert env["gpulstm_device_limits"] == [132, 227 * 1024]
    assert env["model_device"] == "H100" and env["commit"] == "abc123"
    assert env["nvidia_smi"].startswith("unavailable")
    tf32 = env["torch"]["tf32_read_back"]
    assert tf32["matmul"] is False and tf32["cudnn"] is False
    # torch here has no CUDA: no cuDNN reference, a problem, the section fails
    assert rc == 1 and any("no CUDA device" in p for p in env["problems"])


def test_recompute_row_fails_when_recompute_changes_the_bits(monkeypatch):
    """The check can fail: claiming that the kernel loops' backward over part of a direction
    gives the whole loop's bits (it does not: at a window's edge the last step's product is a
    GEMM) makes recompute differ, and the row says which arrays."""
    import types
    from gpulstm.backends import kernel_loop
    ctx = types.SimpleNamespace(dry=True, backend="emulated")
    assert gpucheck._check_recompute(ctx, "gru", "GRU", {}, "fused")["ok"]
    monkeypatch.setattr(kernel_loop.KernelLoop, "backward_segment_exact", True)
    row = gpucheck._check_recompute(ctx, "gru", "GRU", {}, "fused")
    assert not row["ok"] and row["differ"] and "recompute changed the bits" in row["error"]

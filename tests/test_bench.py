"""The asv suite in bench/: it imports and discovers, every benchmark runs once at its smallest
parameters on the numpy backend, and the backend helper of bench/common.py behaves."""
import importlib
import inspect
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import gpulstm as gl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

common = importlib.import_module("bench.common")
speed = importlib.import_module("bench.speed")


def _has_torch():
    return common.torch is not None


# -- bench/common.py: the backend helper ---------------------------------------------------------

def test_numpy_workload_runs_and_synchronizes(monkeypatch):
    ex = gl.get_backend("numpy")
    calls = []
    monkeypatch.setattr(ex, "synchronize", lambda: calls.append(1), raising=False)
    w = common.make_workload("numpy", "lstm", 3, 2, 4, warmup=False)
    assert (w.backend, w.cell, w.T, w.B, w.I, w.H) == ("numpy", "lstm", 3, 2, 4, 4)
    w.forward()
    assert len(calls) == 1
    w.forward_backward()
    assert len(calls) == 2
    w.run("training")
    assert len(calls) == 3


@pytest.mark.parametrize("cell", common.CELLS + common.PLUGIN_CELLS)
def test_every_cell_on_numpy(cell):
    w = common.make_workload("numpy", cell, 2, 3, 5, I=4)
    w.forward()
    w.forward_backward()


def test_cupy_skips_with_reason_without_gpu():
    if gl.available_backends().get("cupy") is None:
        pytest.skip("the cupy backend is usable here")
    with pytest.raises(NotImplementedError, match="cupy"):
        common.make_workload("cupy", "lstm", 2, 2, 4)


def test_torch_cpu_workload_runs():
    if not _has_torch():
        with pytest.raises(NotImplementedError, match="torch is not installed"):
            common.make_workload("torch-cpu", "lstm", 2, 2, 4)
        return
    for cell in common.CELLS:
        w = common.make_workload("torch-cpu", cell, 3, 2, 4)
        w.forward()
        w.forward_backward()
    for cell in common.PLUGIN_CELLS:  # no torch.nn twin: the row is skipped with the reason
        with pytest.raises(NotImplementedError, match="torch.nn has no such cell"):
            common.make_workload("torch-cpu", cell, 3, 2, 4)


@pytest.mark.parametrize("backend", ["torch-cudnn", "torch-cudnn-tf32"])
def test_torch_cudnn_skips_without_cuda(backend):
    if _has_torch() and common.torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(NotImplementedError, match=backend):
        common.make_workload(backend, "gru", 2, 2, 4)


def test_unknown_backend_and_cell():
    with pytest.raises(ValueError, match="unknown backend"):
        common.make_workload("tpu", "lstm", 2, 2, 4)
    with pytest.raises(ValueError, match="unknown cell"):
        common.make_workload("numpy", "lstm2", 2, 2, 4)


def test_flops_anchor():
    T, B, I, H = 7, 3, 5, 11
    assert common.flops("lstm", T, B, I, H) == 8 * T * B * H * (I + H)
    assert common.flops("gru", T, B, I, H) == 6 * T * B * H * (I + H)
    assert common.flops("rnn_tanh", T, B, I, H) == 2 * T * B * H * (I + H)
    assert common.flops("lstm", T, B, I, H, training=True) == 24 * T * B * H * (I + H)
    assert common.flops("cifg", T, B, I, H) == 6 * T * B * H * (I + H)
    assert common.flops("indrnn", T, B, I, H) == 2 * T * B * H * (I + 1)  # u * h: elementwise


def test_best_seconds_one_callable_after_the_other():
    order = []
    out = common.best_seconds({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                              repeat=2, min_sample=0.0, settle=0.0)
    assert set(out) == {"a", "b"} and all(0 <= v < 1 for v in out.values())
    assert order == ["a"] * 3 + ["b"] * 3  # calibration + 2 samples each, not interleaved


def test_profiles(monkeypatch):
    assert set(common.PROFILES["quick"]["T"]) == {10, 50, 100, 500}
    assert {10, 50, 100, 500, 1000, 2000} <= set(common.PROFILES["full"]["T"])
    for grid in common.PROFILES.values():
        assert "emulated" not in grid["backends"]
        assert {"numpy", "cupy", "torch-cpu", "torch-cudnn"} <= set(grid["backends"])
    monkeypatch.setenv("GPULSTM_BENCH_PROFILE", "full")
    monkeypatch.setenv("GPULSTM_BENCH_BACKENDS", "numpy, emulated")
    name, grid = common._profile()
    assert name == "full" and grid["backends"] == ("numpy", "emulated")
    monkeypatch.setenv("GPULSTM_BENCH_BACKENDS", "numpy,tpu")
    with pytest.raises(ValueError, match="tpu"):
        common._profile()
    monkeypatch.setenv("GPULSTM_BENCH_PROFILE", "huge")
    with pytest.raises(ValueError, match="GPULSTM_BENCH_PROFILE"):
        common._profile()


# -- bench/speed.py: every benchmark once, smallest parameters, numpy ----------------------------

def _benchmark_classes():
    return [c for _, c in inspect.getmembers(speed, inspect.isclass)
            if c.__module__ == speed.__name__ and not c.__name__.startswith("_")
            and hasattr(c, "params")]


def _smallest(cls, backend):
    """The first value of each parameter (the smallest), with ``backend`` and the lstm cell."""
    vals = [p[0] for p in cls.params]
    for i, name in enumerate(cls.param_names):
        if name == "backend":
            vals[i] = backend
        elif name == "cell":
            vals[i] = "lstm" if "lstm" in cls.params[i] else cls.params[i][0]
        elif name in ("T", "B", "H"):
            vals[i] = min(cls.params[i])
    return dict(zip(cls.param_names, vals))


def test_suite_classes_and_units():
    names = {c.__name__ for c in _benchmark_classes()}
    assert {"SequenceLength", "BatchHidden", "ThroughputSequenceLength", "RatioSequenceLength",
            "ThroughputBatchHidden", "RatioBatchHidden"} <= names
    for cls in _benchmark_classes():
        assert len(cls.params) == len(cls.param_names)
        for name in dir(cls):
            if name.startswith("track_"):
                assert getattr(cls, name).unit in ("us/step", "GFLOP/s", "t/t_torch", "ms/update")


def _cache_of(cls, p):
    """What ``cls.setup_cache`` measures, at the smallest point and on numpy only (``p`` gets
    the parameter values that point needs)."""
    if cls is speed.CpuVsTorch:
        shape = (3, 2, 4, 5)
        p["shape"] = speed.shape_name(shape)
        return speed.measure_cpu(shapes=[shape], threads=[p["threads"]], backends=["numpy"],
                                 repeat=1)
    if cls is speed.MemoryTrainingStep:
        return speed.measure_memory_step(backends=["numpy"], repeat=1)
    T, B, H = p.get("T", speed.BH_T), p.get("B", speed.SEQ_B), p.get("H", speed.SEQ_H)
    cache = speed.measure([(T, B, H, p["cell"])], backends=["numpy"], repeat=1)
    assert isinstance(cache[(T, B, H, p["cell"], "numpy", "training")], float)
    return cache


def test_every_benchmark_runs_once_on_numpy():
    for cls in _benchmark_classes():
        p = _smallest(cls, "numpy")
        bench = cls()
        cache = _cache_of(cls, p) if hasattr(cls, "setup_cache") else None
        args = list(p.values())
        if cache is not None:
            try:
                bench.setup(cache, *args)
            except NotImplementedError:  # allowed only for a recorded reason (no torch, ...)
                assert any(isinstance(v, str) for v in cache.values()), cls.__name__
                continue
            for name in dir(cls):
                if name.startswith("track_"):
                    v = getattr(bench, name)(cache, *args)
                    assert math.isfinite(v) and v > 0, (cls.__name__, name, v)
        else:
            bench.setup(*args)
            for name in dir(cls):
                if name.startswith(("time_", "peakmem_")):
                    getattr(bench, name)(*args)


def test_track_values_follow_from_the_seconds():
    T, B, H = 10, 2, 4
    cache = {(T, B, H, "gru", "numpy", "training"): 0.002,
             (T, B, H, "gru", "torch-cpu", "training"): 0.001,
             (T, B, H, "gru", "cupy", "training"): "backend 'cupy' unavailable: no GPU"}
    t = speed._Throughput()
    assert t._us_per_step(cache, T, B, H, "gru", "numpy", "training") == pytest.approx(200.0)
    assert t._gflops(cache, T, B, H, "gru", "numpy", "training") == pytest.approx(
        18 * T * B * H * (H + H) / 0.002 / 1e9)
    assert t._ratio(cache, T, B, H, "gru", "numpy", "training") == pytest.approx(2.0)
    with pytest.raises(NotImplementedError, match="no GPU"):
        t._ratio(cache, T, B, H, "gru", "cupy", "training")


# -- asv itself: discovery of the whole suite; gpulstm.benchrun -----------------------------------

def test_asv_check_discovers_the_suite():
    pytest.importorskip("asv")
    r = subprocess.run([sys.executable, "-m", "asv", "check", "-E", "existing:same"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, GPULSTM_BENCH_PROFILE="quick"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "No problems found" in r.stdout, r.stdout + r.stderr


def test_asv_conf():
    pytest.importorskip("asv")
    from asv.config import Config  # asv reads its own JSON dialect (comments allowed)

    c = Config.load(os.path.join(ROOT, "asv.conf.json"))
    assert (c.project, c.benchmark_dir, c.results_dir) == ("gpulstm", "bench", "results")
    assert not os.path.abspath(c.html_dir).startswith(os.path.abspath(c.results_dir))


def test_benchrun_machine_name_and_dry_run(monkeypatch, capsys):
    pytest.importorskip("asv")
    from gpulstm import benchrun

    monkeypatch.setattr(benchrun.platform, "node", lambda: "Node_7.cluster")
    assert benchrun.default_machine_name({}) == "node-7"
    assert benchrun.default_machine_name({"gpu": "NVIDIA H100 80GB HBM3"}) == "h100-80gb-hbm3-node-7"
    info = benchrun.machine_info("m", {"gpu": "NVIDIA H100", "driver": "570.1"}, {"cupy": "13.4"})
    assert info["machine"] == "m" and info["gpu"] == "NVIDIA H100" and info["cupy"] == "13.4"
    assert {"os", "arch", "cpu", "num_cpu", "ram"} <= set(info)
    assert benchrun.machine_info("m")["gpu"] == "none"

    monkeypatch.setattr(benchrun, "gpu_info", lambda: {})
    monkeypatch.setattr(benchrun, "library_versions", lambda *a: {"numpy": np.__version__})
    monkeypatch.setattr(benchrun, "register_machine",
                        lambda info: pytest.fail("a dry run must not register the machine"))
    monkeypatch.chdir(ROOT)
    assert benchrun.main(["--dry-run", "--full", "--bench", "speed", "--backend", "numpy",
                          "--machine", "ci"]) == 0
    out = capsys.readouterr().out
    assert "profile full, machine ci" in out
    assert "GPULSTM_BENCH_PROFILE=full" in out and "GPULSTM_BENCH_BACKENDS=numpy" in out
    for part in ("-m asv run", "-E existing:same", "--set-commit-hash", "--machine ci",
                 "--bench speed"):
        assert part in out
    info_line = next(line for line in out.splitlines() if line.startswith("benchrun: machine info "))
    assert json.loads(info_line.split("machine info ", 1)[1])["machine"] == "ci"


def test_cpu_tables_shapes_and_ratio():
    """The CPU table's five shapes are benchmarked; the ratio is the backend's seconds over
    torch-cpu's at the same point, and a skipped point carries its reason."""
    assert speed.CPU_SHAPES == ((100, 1, 128, 128), (100, 32, 128, 256), (100, 64, 512, 512),
                                (1000, 8, 128, 128), (100, 32, 32, 32))
    name = speed.shape_name((100, 32, 32, 32))
    assert name == "T=100 B=32 I=32 H=32"
    cache = {(name, "training", 1, "cpu"): 0.003, (name, "training", 1, "torch-cpu"): 0.002,
             (name, "forward", 1, "cpu"): "threadpoolctl missing"}
    b = speed.CpuVsTorch()
    assert b.track_time_ratio_vs_torch(cache, name, "training", 1, "cpu") == pytest.approx(1.5)
    assert b.track_us_per_step(cache, name, "training", 1, "cpu") == pytest.approx(30.0)
    with pytest.raises(NotImplementedError, match="threadpoolctl"):
        b.setup(cache, name, "forward", 1, "cpu")


def test_thread_limit_sets_and_restores():
    if common.threadpoolctl is None:
        with pytest.raises(NotImplementedError, match="threadpoolctl"):
            with common.thread_limit(1):
                pass
        return
    from gpulstm.backends import cpu as cpu_execution
    before = cpu_execution.set_num_threads(0)
    cpu_execution.set_num_threads(before)
    with common.thread_limit(1):
        assert cpu_execution.set_num_threads(1) == 1
        if common.torch is not None:
            assert common.torch.get_num_threads() == 1
        assert all(info["num_threads"] == 1 for info in common.threadpoolctl.threadpool_info())
    assert cpu_execution.set_num_threads(before) == before

"""The memory sweeps' default backend: the compiled cpu execution where it builds."""
from gpulstm.lab import sweep


def test_default_memory_backend(monkeypatch):
    from gpulstm.backends import BackendUnavailable
    import gpulstm.backends as backends
    assert sweep.default_memory_backend(gpu=True) == "cupy"
    monkeypatch.setattr(backends, "get_backend", lambda name: object())
    assert sweep.default_memory_backend() == "cpu"

    def missing(name):
        raise BackendUnavailable(f"{name}: no compiler")
    monkeypatch.setattr(backends, "get_backend", missing)
    assert sweep.default_memory_backend() == "numpy"


def test_bench_memory_uses_it(monkeypatch):
    import importlib
    import sys
    from pathlib import Path
    monkeypatch.delenv("GPULSTM_BENCH_BACKEND", raising=False)
    monkeypatch.setattr(sweep, "default_memory_backend", lambda gpu=False: "cpu")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    sys.modules.pop("memory", None)
    mod = importlib.import_module("memory")
    try:
        assert mod.BACKEND == "cpu"
        monkeypatch.setenv("GPULSTM_BENCH_BACKEND", "numpy")
        assert importlib.reload(mod).BACKEND == "numpy"
    finally:
        sys.modules.pop("memory", None)

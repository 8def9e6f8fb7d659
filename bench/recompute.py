"""Recompute (checkpointed BPTT, ``gpulstm.engine.forward(..., recompute=True)``): memory and
time of one training step (forward + BPTT, dL/dx and the weight gradients) against sequence
length, with and without recompute. LSTM, B=4, H=64, I=16, float32, the ``cpu`` execution
(``GPULSTM_BENCH_BACKEND``, as for the memory benchmarks, to change it; skipped where it
cannot run; on cupy the traced peak does not see device memory).

- ``RecomputeMemory``: ``peakmem_training_step`` (asv: the process's peak RSS, which also
  holds the interpreter, NumPy and PyTorch, a few hundred MB) and
  ``track_traced_peak_mib`` (MiB: the peak of the arrays the step allocates, by
  tracemalloc, NumPy's arrays included: what recompute changes), params T x recompute;
  ``time_training_step``.
- ``RecomputeTimeRatio``: ``track_time_ratio`` (t/t_plain): a training step with recompute
  over one without, same T (about 1.3-1.5: one forward more), best of 3 in one process.

Grids: T in {1000, 10000} (quick profile), {1000, 10000, 100000} (full). The engine call is
used directly (the faces' option comes later).
"""
import os
import tracemalloc

import numpy as np

from .common import PROFILE_NAME, best_seconds

import gpulstm as gl
from gpulstm import engine

BACKEND = os.environ.get("GPULSTM_BENCH_BACKEND") or "cpu"
T_GRID = (1000, 10000) if PROFILE_NAME == "quick" else (1000, 10000, 100000)
B, H, I = 4, 64, 16
TIMEOUT = 600 if PROFILE_NAME == "quick" else 1800


class TrainingStep:
    """One LSTM training step of T steps through the engine, recompute on or off."""

    def __init__(self, T, recompute, backend=BACKEND, seed=0):
        try:
            self.ex = gl.get_backend(backend)
        except (gl.BackendUnavailable, ImportError, ValueError) as e:  # ValueError: torch-*
            raise NotImplementedError(f"backend {backend!r} unavailable: {e}") from None
        m = gl.LSTM(I, H, backend="numpy", dtype="float32", seed=seed)
        self.cell, self.params = m._make_cell(), m._weights()
        rng = np.random.default_rng(seed)
        xa = self.ex.asarray
        self.x = xa(rng.standard_normal((T, B, I)), np.float32)
        self.h0 = xa(np.zeros((1, B, H)), np.float32)
        self.L = xa(np.full(B, T), np.int32)
        self.dy = xa(rng.standard_normal((T, B, H)) * 1e-2, np.float32)
        self.recompute = recompute

    def __call__(self):
        y, _, _, ctx = engine.forward(self.ex, self.cell, self.params, self.x, self.h0, self.h0,
                                      self.L, recompute=self.recompute)
        del y
        out = engine.backward(self.ex, ctx, self.dy)
        self.ex.synchronize()
        return out


def traced_peak(fn):
    """Peak bytes of the Python-visible allocations (tracemalloc: NumPy's arrays too) of one
    call of ``fn`` above what was allocated before it."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


class RecomputeMemory:
    """Peak memory and time of a training step vs T, with and without recompute."""
    params = [list(T_GRID), [False, True]]
    param_names = ["T", "recompute"]
    number = 1
    repeat = (1, 3, 10.0)
    rounds = 1
    warmup_time = 0.0
    timeout = TIMEOUT

    def setup(self, T, recompute):
        self.step = TrainingStep(T, recompute)

    def peakmem_training_step(self, T, recompute):
        self.step()

    def time_training_step(self, T, recompute):
        self.step()

    def track_traced_peak_mib(self, T, recompute):
        return traced_peak(self.step) / 2**20
    track_traced_peak_mib.unit = "MiB"


def measure_ratio(T_values=T_GRID, repeat=3):
    """{T: seconds with recompute / seconds without}, both timed in this process."""
    out = {}
    for T in T_values:
        try:
            steps = {rc: TrainingStep(T, rc) for rc in (False, True)}
        except NotImplementedError as e:
            out[T] = str(e)
            continue
        for s in steps.values():
            s()  # warm up: build, allocate
        secs = best_seconds(steps, repeat=repeat)
        out[T] = secs[True] / secs[False]
    return out


class RecomputeTimeRatio:
    """Time of a training step with recompute over one without (same T)."""
    params = [list(T_GRID)]
    param_names = ["T"]
    timeout = TIMEOUT

    def setup_cache(self):
        return measure_ratio()

    def setup(self, cache, T):
        if isinstance(cache[T], str):
            raise NotImplementedError(cache[T])

    def track_time_ratio(self, cache, T):
        return cache[T]
    track_time_ratio.unit = "t/t_plain"

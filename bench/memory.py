"""Long-range memory benchmarks: gradient flow and long-lag tasks (asv ``track_*``).

asv is the harness, Dask the engine: each task class's ``setup_cache`` runs the grid of the
profile through :func:`gpulstm.lab.sweep.run_sweep` (task x cell x T x learning rate x seed,
early stopping at the criterion, a budget that grows with T, a cell's T series stopped after
two failed lags; see that module), and its ``track_*`` methods read their point. Points the
series rules did not run are skipped (``NotImplementedError`` in ``setup``).

- ``TrackGradFlow``: at initialisation, loss at the last step only (gpulstm.lab.memory): the
  distance at which ||dL/dh_t|| / ||dL/dh_T|| first falls below 1e-3 and 1e-6 (T + 1 = not
  within T) and log10 of the ratio at the initial state (distance T).
- ``TrackAdding``, ``TrackTemporalOrder``, ``TrackRecall``, ``TrackRecallVariable``,
  ``TrackAdding1997``, ``TrackLongLag2a`` (params cell, T, lr, seed):
  ``track_updates_to_criterion`` (NaN when the criterion was not met within the budget: the
  report shows "> budget", a lower bound), ``track_reached`` (1/0), ``track_budget``
  (updates allowed), ``track_test_metric`` (the task's metric on 1000 fresh sequences after
  the last update), ``track_passed_test`` (1/0: the criterion on those test sequences);
  adding also the gradient flow of the trained cell.

Profiles (gpulstm.lab.sweep.PROFILES): ``GPULSTM_MEMORY_PROFILE`` (``quick``, ``cpu-full``,
``gpu-full``); default ``quick``, or with ``GPULSTM_BENCH_PROFILE=full`` ``gpu-full`` on
the cupy backend and ``cpu-full`` otherwise. Backend: ``GPULSTM_BENCH_BACKEND`` (default
:func:`gpulstm.lab.sweep.default_memory_backend`: the compiled ``cpu`` where it builds). Workers: ``GPULSTM_BENCH_WORKERS`` (default: sized to the machine; 0 = serial) or a
Dask scheduler in ``GPULSTM_DASK_SCHEDULER``. ``GPULSTM_SWEEP_CACHE``: a folder of finished
points reused across runs (the main job trains there first, with a progress bar).
"""
import math
import os

import numpy as np

from gpulstm import BackendUnavailable, get_backend
from gpulstm.lab.memory import gradient_flow
from gpulstm.lab.sweep import PROFILES, default_memory_backend, memory_profile_name, run_sweep

BACKEND = os.environ.get("GPULSTM_BENCH_BACKEND") or default_memory_backend()


PROFILE_NAME = memory_profile_name(backend=BACKEND)
PROFILE = PROFILES[PROFILE_NAME]
CELLS = list(PROFILE["cells"])
SEEDS = list(PROFILE["seeds"])
LRS = sorted({lr for c in CELLS for lr in PROFILE["lrs"][c]})
CACHE_TIMEOUT = 6 * 3600


def _backend_ok():
    try:
        get_backend(BACKEND)
        return True
    except (BackendUnavailable, ImportError):
        return False


def _workers():
    w = os.environ.get("GPULSTM_BENCH_WORKERS")
    return None if w is None else int(w)


def _unavailable():
    """setup_cache's result when the backend cannot run: a dict (asv drops a None cache from
    the arguments, which would break setup's signature), read by :func:`_skip_without`."""
    return {"unavailable": f"backend {BACKEND!r} is not available here"}


def _skip_without(cache, key=None):
    if "unavailable" in cache:
        raise NotImplementedError(cache["unavailable"])
    if key is not None and key not in cache:
        raise NotImplementedError("not run: the point is outside this profile's grid, or its "
                                  "series stopped (two failed lags, or another learning rate "
                                  "solved a lag this one failed)")


def _task_cache(task):
    if not _backend_ok():
        return _unavailable()
    if task not in PROFILE["tasks"]:
        return {}  # not in this profile: every point skips
    recs = run_sweep(PROFILE, tasks=[task], backend=BACKEND, workers=_workers(),
                     cache=os.environ.get("GPULSTM_SWEEP_CACHE"), progress=False)
    return {(r["cell"], r["T"], r["lr"], r["seed"]): r for r in recs}


class TrackGradFlow:
    """Gradient flow at initialisation (loss at the last step only, float64, batch of 16
    adding-problem sequences, 32 hidden units); see the module docstring."""
    params = (CELLS, list(PROFILE["flow_T"]), list(PROFILE["flow_seeds"]))
    param_names = ["cell", "T", "seed"]
    timeout = 120

    def setup_cache(self):
        if not _backend_ok():
            return _unavailable()
        out = {}
        for c in self.params[0]:
            for T in self.params[1]:
                for s in self.params[2]:
                    r = gradient_flow(c, T, seed=s, hidden=PROFILE["hidden"],
                                      batch=PROFILE["flow_batch"], backend=BACKEND)
                    out[(c, T, s)] = {k: r[k] for k in ("distance_1e3", "distance_1e6",
                                                        "log10_ratio_end")}
        return out

    setup_cache.timeout = CACHE_TIMEOUT

    def setup(self, cache, cell, T, seed):
        _skip_without(cache)

    def track_distance_1e3(self, cache, cell, T, seed):
        """Distance T - t at which ||dL/dh_t|| / ||dL/dh_T|| first falls below 1e-3."""
        return cache[(cell, T, seed)]["distance_1e3"]

    track_distance_1e3.unit = "steps"

    def track_distance_1e6(self, cache, cell, T, seed):
        """Distance T - t at which ||dL/dh_t|| / ||dL/dh_T|| first falls below 1e-6."""
        return cache[(cell, T, seed)]["distance_1e6"]

    track_distance_1e6.unit = "steps"

    def track_log10_ratio_end(self, cache, cell, T, seed):
        """log10 ||dL/dh_0|| / ||dL/dh_T|| (the gradient reaching the initial state; -inf
        when it underflows)."""
        return cache[(cell, T, seed)]["log10_ratio_end"]

    track_log10_ratio_end.unit = "log10"


class _TaskBench:
    """Shared parameters and tracks of the task classes (each defines its own setup_cache:
    asv keys the cache by the function's source line)."""
    param_names = ["cell", "T", "lr", "seed"]
    timeout = 120

    def setup(self, cache, cell, T, lr, seed):
        _skip_without(cache, (cell, T, lr, seed))

    def track_updates_to_criterion(self, cache, cell, T, lr, seed):
        """Adam updates until a validation check (every 50 updates, 256 fresh sequences) first
        met the task's criterion; NaN when it did not within the budget (> track_budget)."""
        u = cache[(cell, T, lr, seed)]["updates_to_criterion"]
        return math.nan if u is None else float(u)

    track_updates_to_criterion.unit = "updates"

    def track_reached(self, cache, cell, T, lr, seed):
        """1 when the criterion was met within the budget, else 0."""
        return float(cache[(cell, T, lr, seed)]["reached"])

    track_reached.unit = "fraction"

    def track_budget(self, cache, cell, T, lr, seed):
        """Updates allowed at this T (the budget grows with T)."""
        return float(cache[(cell, T, lr, seed)]["budget"])

    track_budget.unit = "updates"

    def track_test_metric(self, cache, cell, T, lr, seed):
        """The task's metric on 1000 fresh test sequences after the last update (MSE for
        adding, accuracy for temporal order and recall)."""
        return cache[(cell, T, lr, seed)]["test_metric"]

    track_test_metric.unit = "metric"

    def track_passed_test(self, cache, cell, T, lr, seed):
        """1 when the stopped model passed the task's criterion on the held-out test
        sequences (a seed counts as solved only when it reached on validation and passed
        here), else 0."""
        r = cache[(cell, T, lr, seed)]
        return float(bool(r.get("passed_test", False)))

    track_passed_test.unit = "fraction"


def _params(task):
    # a task outside the profile keeps one placeholder lag (0): its points all skip
    return (CELLS, list(PROFILE["tasks"].get(task, ())) or [0], LRS, SEEDS)


class TrackAdding(_TaskBench):
    """Adding problem (criterion: validation MSE < 0.01; baseline 1/6, "remembers one of the
    two numbers" 1/12)."""
    params = _params("adding")

    def setup_cache(self):
        return _task_cache("adding")

    setup_cache.timeout = CACHE_TIMEOUT

    def track_trained_grad_distance_1e3(self, cache, cell, T, lr, seed):
        """After training: distance at which the gradient ratio first falls below 1e-3."""
        return cache[(cell, T, lr, seed)].get("grad_distance_1e3", math.nan)

    track_trained_grad_distance_1e3.unit = "steps"

    def track_trained_grad_log10_ratio_end(self, cache, cell, T, lr, seed):
        """After training: log10 ||dL/dh_0|| / ||dL/dh_T||."""
        return cache[(cell, T, lr, seed)].get("grad_log10_ratio_end", math.nan)

    track_trained_grad_log10_ratio_end.unit = "log10"


class TrackTemporalOrder(_TaskBench):
    """Temporal order (criterion: validation accuracy >= 0.99; chance 0.25)."""
    params = _params("temporal_order")

    def setup_cache(self):
        return _task_cache("temporal_order")

    setup_cache.timeout = CACHE_TIMEOUT


class TrackRecall(_TaskBench):
    """Delayed recall of one symbol of 8 over lag T (criterion: validation accuracy >= 0.99;
    chance 1/8)."""
    params = _params("recall")

    def setup_cache(self):
        return _task_cache("recall")

    setup_cache.timeout = CACHE_TIMEOUT


class TrackRecallVariable(_TaskBench):
    """Delayed recall with the symbol at a uniform position in [0, T) (variable lag)."""
    params = _params("recall_variable")

    def setup_cache(self):
        return _task_cache("recall_variable")

    setup_cache.timeout = CACHE_TIMEOUT


class TrackAdding1997(_TaskBench):
    """The adding problem as published (Hochreiter & Schmidhuber 1997, Exp. 4): lengths in
    [T, 1.1 T], criterion >= 99 % of the sequences within 0.04 of the target."""
    params = _params("adding_1997")

    def setup_cache(self):
        return _task_cache("adding_1997")

    setup_cache.timeout = CACHE_TIMEOUT


class TrackLongLag2a(_TaskBench):
    """The noise-free long-time-lag task 2a (Hochreiter & Schmidhuber 1997), T = p: the last
    prediction right on every test sequence."""
    params = _params("long_lag_2a")

    def setup_cache(self):
        return _task_cache("long_lag_2a")

    setup_cache.timeout = CACHE_TIMEOUT


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    for cls in (TrackAdding, TrackTemporalOrder, TrackRecall, TrackRecallVariable,
                TrackAdding1997, TrackLongLag2a):
        for k, v in sorted(cls().setup_cache().items()):
            print(cls.__name__, k, v.get("updates_to_criterion"), v.get("test_metric"))

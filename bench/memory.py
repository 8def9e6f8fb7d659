"""Long-range memory benchmarks: gradient flow and long-lag tasks (asv ``track_*``).

Cells (gpulstm.train.make_cell): lstm_fb0, lstm_fb1, lstm_nofg, lstm_peep, gru, rnn_tanh,
irnn. Parameters: cell, T (the lag), seed.

- ``TrackGradFlow``: at initialisation, loss at the last step only (gpulstm.memory); the
  distance at which ||dL/dh_t|| / ||dL/dh_T|| first falls below 1e-3 and 1e-6 (T + 1 = not
  within T) and log10 of the ratio at the initial state (distance T).
- ``TrackAdding``, ``TrackTemporalOrder``, ``TrackCopyMemory``: a fixed training budget, then
  the test metric on 1000 fresh sequences, ``solved`` (1 if the task's criterion holds on the
  test metric, else 0; the mean over seeds is the success rate) and ``train_sequences`` (the
  sequences seen when a validation check every 50 updates first met the criterion; budget + 1
  = not within the budget). ``TrackAdding`` also probes the gradient flow of the trained cell.

Budgets (gpulstm.train.PROFILES; environment variable GPULSTM_BENCH_PROFILE):

- ``quick`` (default): 400 Adam updates (lr 1e-2, clipping at 1) of 32 fresh sequences
  (12,800 sequences), 32 hidden units, seeds 0 and 1; adding T in {10, 20, 50, 100},
  temporal order T in {20, 50}, copy T = 10; gradient flow T in {10, 20, 50, 100, 200},
  seeds 0-2. About 10 minutes on 2 CPU cores with the numpy backend (two training processes
  in parallel).
- ``full``: 3000 updates (96,000 sequences), seeds 0-2; adding T up to 200, temporal order
  up to 200, copy up to 100; gradient flow up to T = 400, seeds 0-4. Meant for a GPU.

Backend: numpy unless GPULSTM_BENCH_BACKEND names another (``cupy`` on a GPU machine); a
backend missing here skips every benchmark. The expensive runs happen once per class in
``setup_cache`` (asv shares its result among the class's track_ methods and parameters);
GPULSTM_BENCH_WORKERS sets the training processes (default 2 on numpy/emulated, 1 on cupy).
"""
import multiprocessing
import os

import numpy as np

from gpulstm import BackendUnavailable, get_backend
from gpulstm.memory import gradient_flow
from gpulstm.train import PROFILES, make_cell, train

PROFILE_NAME = os.environ.get("GPULSTM_BENCH_PROFILE", "quick")
if PROFILE_NAME not in PROFILES:
    raise ValueError(f"GPULSTM_BENCH_PROFILE must be one of {tuple(PROFILES)}; got {PROFILE_NAME!r}")
PROFILE = PROFILES[PROFILE_NAME]
BACKEND = os.environ.get("GPULSTM_BENCH_BACKEND", "numpy")
CELLS = list(PROFILE["cells"])
SEEDS = list(PROFILE["seeds"])
CACHE_TIMEOUT = 4 * 3600 if PROFILE_NAME == "full" else 1800


def _backend_ok():
    try:
        get_backend(BACKEND)
        return True
    except (BackendUnavailable, ImportError):
        return False


def _workers():
    default = 1 if BACKEND == "cupy" else 2
    return max(1, int(os.environ.get("GPULSTM_BENCH_WORKERS", default)))


def _grid(fn, keys):
    """{key: fn(key)} over ``keys``, in worker processes (fork) when more than one."""
    n = min(_workers(), len(keys))
    if n == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return {k: fn(k) for k in keys}
    with multiprocessing.get_context("fork").Pool(n) as pool:
        return dict(zip(keys, pool.map(fn, keys, chunksize=1)))


def _flow(key):
    cell, T, seed = key
    r = gradient_flow(cell, T, seed=seed, hidden=PROFILE["hidden"], batch=PROFILE["flow_batch"],
                      backend=BACKEND)
    return {k: r[k] for k in ("distance_1e3", "distance_1e6", "log10_ratio_end")}


def _task_run(key):
    task, cell, T, seed = key
    p = PROFILE
    r = train(task, cell, T, p["steps"], batch=p["batch"], hidden=p["hidden"], lr=p["lr"],
              seed=seed, backend=BACKEND, clip=p["clip"], optimizer=p["optimizer"])
    out = {"test_metric": r.test_metric, "solved": float(r.passed),
           "train_sequences": (r.sequences_to_pass if r.sequences_to_pass is not None
                               else r.budget_sequences + 1),
           "wall_s": r.wall_s}
    if task == "adding":  # gradient flow of the trained cell, float64 copy of its weights
        m = make_cell(cell, 2, p["hidden"], backend=BACKEND, dtype="float64", seed=seed)
        m.load_state_dict(r.model.state_dict())
        g = gradient_flow(cell, T, seed=seed, batch=p["flow_batch"], model=m)
        out.update({f"grad_{k}": g[k] for k in ("distance_1e3", "log10_ratio_end")})
    return out


def _unavailable():
    """setup_cache's result when the backend cannot run: a dict (asv drops a None cache from
    the arguments, which would break setup's signature), read by :func:`_skip_without`."""
    return {"unavailable": f"backend {BACKEND!r} is not available here"}


def _task_cache(task):
    if not _backend_ok():
        return _unavailable()
    keys = [(task, c, T, s) for c in CELLS for T in PROFILE["tasks"][task] for s in SEEDS]
    return {k[1:]: v for k, v in _grid(_task_run, keys).items()}


def _skip_without(cache):
    if "unavailable" in cache:
        raise NotImplementedError(cache["unavailable"])


class TrackGradFlow:
    """Gradient flow at initialisation (loss at the last step only, float64, batch of 16
    adding-problem sequences, 32 hidden units); see the module docstring."""
    params = (CELLS, list(PROFILE["flow_T"]), list(PROFILE["flow_seeds"]))
    param_names = ["cell", "T", "seed"]
    timeout = 120

    def setup_cache(self):
        if not _backend_ok():
            return _unavailable()
        keys = [(c, T, s) for c in self.params[0] for T in self.params[1] for s in self.params[2]]
        return _grid(_flow, keys)

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
        """log10 ||dL/dh_0|| / ||dL/dh_T|| (the gradient reaching the initial state)."""
        return cache[(cell, T, seed)]["log10_ratio_end"]

    track_log10_ratio_end.unit = "log10"


class _TaskBench:
    """Shared parameters and metrics of the task classes (each defines its own setup_cache:
    asv keys the cache by the function's source line)."""
    param_names = ["cell", "T", "seed"]
    timeout = 120

    def setup(self, cache, cell, T, seed):
        _skip_without(cache)

    def track_solved(self, cache, cell, T, seed):
        """1 when the task's pass criterion holds on the test metric, else 0."""
        return cache[(cell, T, seed)]["solved"]

    track_solved.unit = "fraction"

    def track_train_sequences(self, cache, cell, T, seed):
        """Training sequences seen when the validation metric first met the criterion
        (checked every 50 updates); budget + 1 when it never did."""
        return cache[(cell, T, seed)]["train_sequences"]

    track_train_sequences.unit = "sequences"


class TrackAdding(_TaskBench):
    """Adding problem (criterion: test MSE < 0.01; baseline 0.167)."""
    params = (CELLS, list(PROFILE["tasks"]["adding"]), SEEDS)

    def setup_cache(self):
        return _task_cache("adding")

    setup_cache.timeout = CACHE_TIMEOUT

    def track_test_mse(self, cache, cell, T, seed):
        """Test MSE on 1000 fresh sequences after the budget."""
        return cache[(cell, T, seed)]["test_metric"]

    track_test_mse.unit = "mse"

    def track_trained_grad_distance_1e3(self, cache, cell, T, seed):
        """After training: distance at which the gradient ratio first falls below 1e-3."""
        return cache[(cell, T, seed)]["grad_distance_1e3"]

    track_trained_grad_distance_1e3.unit = "steps"

    def track_trained_grad_log10_ratio_end(self, cache, cell, T, seed):
        """After training: log10 ||dL/dh_0|| / ||dL/dh_T||."""
        return cache[(cell, T, seed)]["grad_log10_ratio_end"]

    track_trained_grad_log10_ratio_end.unit = "log10"


class TrackTemporalOrder(_TaskBench):
    """Temporal order (criterion: test accuracy >= 0.99; chance 0.25)."""
    params = (CELLS, list(PROFILE["tasks"]["temporal_order"]), SEEDS)

    def setup_cache(self):
        return _task_cache("temporal_order")

    setup_cache.timeout = CACHE_TIMEOUT

    def track_test_accuracy(self, cache, cell, T, seed):
        """Test accuracy on 1000 fresh sequences after the budget."""
        return cache[(cell, T, seed)]["test_metric"]

    track_test_accuracy.unit = "fraction"


class TrackCopyMemory(_TaskBench):
    """Copy memory (criterion: test cross-entropy < 0.1 x baseline 10 ln 8 / (T + 20))."""
    params = (CELLS, list(PROFILE["tasks"]["copy"]), SEEDS)

    def setup_cache(self):
        return _task_cache("copy")

    setup_cache.timeout = CACHE_TIMEOUT

    def track_test_xent(self, cache, cell, T, seed):
        """Test cross-entropy (nats per step) on 1000 fresh sequences after the budget."""
        return cache[(cell, T, seed)]["test_metric"]

    track_test_xent.unit = "nats"


def _main():
    """Print the cached figures directly (python bench/memory.py), without asv."""
    import time
    t0 = time.perf_counter()
    flow = TrackGradFlow().setup_cache()
    print(f"gradient flow: {time.perf_counter() - t0:.1f} s")
    for k, v in sorted(flow.items()):
        print(k, v)
    for cls in (TrackAdding, TrackTemporalOrder, TrackCopyMemory):
        t0 = time.perf_counter()
        res = cls().setup_cache()
        print(f"{cls.__name__}: {time.perf_counter() - t0:.1f} s")
        for k, v in sorted(res.items()):
            print(k, {a: (round(b, 4) if isinstance(b, float) else b) for a, b in v.items()})


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    _main()

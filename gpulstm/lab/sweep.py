"""Long-range memory sweeps: task x cell x T x learning rate x seed, run on ``dask.distributed``.

Every point of the grid is one independent training run (:func:`gpulstm.lab.train.train` with
early stopping at the task's criterion), seeded by its own parameters, so a sweep gives the
same numbers whether it runs serially, on a local cluster or on many machines. The headline
figure of a point is **updates to criterion**: the first validation check (every
``eval_every`` updates, ``eval_size`` fresh sequences) that meets the task's criterion. A run
that does not get there within its budget is reported as "more than budget" (a lower bound),
never as a value.

Rules, applied the same way on every executor (they depend only on finished results):

- **budget grows with T**: ``budget_base + budget_per_T * T`` updates;
- **at criterion**: a seed is at the criterion when its validation metric met the task's
  criterion within the budget (validation only decides when to stop) *and* the stopped model
  passes the criterion on ``test_size`` (>= 1000 in the profiles) fresh held-out test
  sequences; a seed that reached on validation but fails on test is counted and reported as
  such ("failed test"), never as solved;
- **solved**: a (task, cell, T, lr) is solved when at least 2/3 of its seeds (rounded up:
  2 of 3, 4 of 5) are at the criterion; a lag T is solved for a cell when one of its
  learning rates solved it, and the best learning rate at T is the one with the most seeds
  at the criterion, then the lowest median updates to criterion;
- **T series stop**: a cell's lags run in increasing order, every learning rate of the grid
  until a lag is solved; from then on only the learning rate that was best at the last
  solved lag runs the larger lags (the grid is explored where it is cheap, and the long lags
  cost one learning rate's seeds); after two failed lags the remaining lags are not run
  (reported as "not run"). Every point that ran is kept and reported.

Executors: ``workers=0`` runs in this process (the reference); otherwise a
``distributed.LocalCluster`` of single-threaded worker processes (default: one per core on a
CPU; on a GPU machine ``2 x devices`` workers, each pinned to device ``i % devices``, since
small models are launch-bound), or an existing cluster given by ``scheduler`` (an address,
or the environment variable ``GPULSTM_DASK_SCHEDULER``).

``cache``: a folder that keeps one JSON file per finished point (named by a hash of the point
and every setting that changes its result); a later sweep with the same folder reads those
points instead of training again. The caller chooses a folder per code version (the benchmark
runner uses one per machine and commit).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .train import CELLS

__all__ = ["PROFILES", "memory_profile_name", "default_memory_backend", "Point", "budget", "narrow", "profile_points", "run_point", "run_sweep",
           "summarize", "updates_wide", "SCHEDULER_ENV"]

SCHEDULER_ENV = "GPULSTM_DASK_SCHEDULER"

_COMMON = {"hidden": 32, "batch": 32, "clip": 1.0, "optimizer": "adam", "dtype": "float32",
           "eval_every": 50, "eval_size": 256, "test_size": 1000, "recall_length": 1,
           "flow_batch": 16}

# Profiles of the long-range memory suite (bench/memory.py, ``gpulstm memory --profile``).
# ``lrs`` maps a cell to its learning-rate grid; quick uses, per cell, the learning rates that
# won on adding or temporal order in the committed cpu-full run (results/memory/MEMORY.md),
# the full profiles the whole grid {3e-4, 1e-3, 3e-3, 1e-2} for every cell and task (the
# T-series rule above decides which of them run at each lag; ``lrs_run`` in the summary says).
_GRID = (3e-4, 1e-3, 3e-3, 1e-2)
PROFILES = {
    # the main job on 2 CPU cores: a few minutes of training
    "quick": dict(_COMMON, cells=("lstm_fb1", "lstm_nofg", "gru", "rnn_tanh", "irnn"),
                  seeds=(0, 1, 2),
                  lrs={"lstm_fb1": (1e-3, 1e-2), "lstm_nofg": (1e-2,), "gru": (1e-2,),
                       "rnn_tanh": (1e-2,), "irnn": (1e-3, 1e-2)},
                  tasks={"adding": (50, 100, 200), "temporal_order": (50, 100)},
                  budget_base=1000, budget_per_T=10,
                  flow_T=(10, 50, 100, 200), flow_seeds=(0, 1, 2)),
    # run once on a 2-core CPU and committed
    "cpu-full": dict(_COMMON, cells=CELLS, seeds=(0, 1, 2), lrs={c: _GRID for c in CELLS},
                     tasks={"adding": (50, 100, 200, 400), "temporal_order": (50, 100, 200),
                            "recall": (20, 50, 100, 200)},
                     budget_base=1500, budget_per_T=15,
                     flow_T=(10, 20, 50, 100, 200, 400), flow_seeds=(0, 1, 2)),
    # a GPU machine
    "gpu-full": dict(_COMMON, cells=CELLS, seeds=(0, 1, 2, 3, 4), lrs={c: _GRID for c in CELLS},
                     tasks={"adding": (50, 100, 200, 400, 750, 1000),
                            "temporal_order": (50, 100, 200, 400),
                            "recall": (20, 50, 100, 200, 500, 1000)},
                     budget_base=2000, budget_per_T=20,
                     flow_T=(10, 20, 50, 100, 200, 400, 1000), flow_seeds=(0, 1, 2, 3, 4)),
}


def memory_profile_name(bench_profile=None, backend="numpy", env=None):
    """The memory profile of a benchmark run: ``$GPULSTM_MEMORY_PROFILE`` when set, else
    ``quick`` for the quick benchmark profile and ``gpu-full`` (cupy) or ``cpu-full`` for the
    full one. Used by the asv memory suite and by the main job's sweep, so both agree."""
    env = os.environ if env is None else env
    name = env.get("GPULSTM_MEMORY_PROFILE")
    if name is None:
        full = (bench_profile or env.get("GPULSTM_BENCH_PROFILE")) == "full"
        name = ("gpu-full" if backend == "cupy" else "cpu-full") if full else "quick"
    if name not in PROFILES:
        raise ValueError(f"GPULSTM_MEMORY_PROFILE must be one of {tuple(PROFILES)}; got {name!r}")
    return name


def default_memory_backend(gpu=False):
    """The backend of the memory sweeps when none is named: ``cupy`` on a GPU machine, else
    the compiled ``cpu`` execution where it builds (measured on the 2-core vm, shared, best
    of 2: whole training runs 2.0-5.4x faster than ``numpy``), else ``numpy``."""
    if gpu:
        return "cupy"
    from ..backends import BackendUnavailable, get_backend
    try:
        get_backend("cpu")
        return "cpu"
    except (BackendUnavailable, ImportError, OSError):
        return "numpy"


@dataclass(frozen=True, order=True)
class Point:
    """One training run of the grid."""
    task: str
    cell: str
    T: int
    lr: float
    seed: int


def _profile(profile):
    if isinstance(profile, dict):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {tuple(PROFILES)}")
    return PROFILES[profile]


def budget(profile, T):
    """Updates allowed at lag T: ``budget_base + budget_per_T * T``."""
    p = _profile(profile)
    return int(p["budget_base"] + p["budget_per_T"] * T)


def seeds_needed(n_seeds):
    """Seeds that must reach the criterion for a (task, cell, T, lr) to count as solved."""
    return math.ceil(2 * n_seeds / 3)


def profile_points(profile):
    """Every point a profile may run (before the series rules prune any)."""
    p = _profile(profile)
    return [Point(task, cell, T, lr, seed) for task, Ts in p["tasks"].items()
            for cell in p["cells"] for T in Ts for lr in p["lrs"][cell] for seed in p["seeds"]]


def narrow(profile, *, tasks=None, cells=None, Ts=None, lrs=None, seeds=None, budget=None):
    """A copy of ``profile`` with any of its tasks, cells, lags ``Ts`` (every task), learning
    rates (every cell), seeds or budget (updates at every lag) replaced. Checks every value
    (ValueError naming it) so that a typo is found before anything trains."""
    from .tasks import TASKS

    p = dict(_profile(profile))
    for t in tasks or ():
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected one of {TASKS}")
    for c in cells or ():
        if c not in CELLS:
            raise ValueError(f"unknown cell {c!r}; expected one of {CELLS}")
    for T in Ts or ():
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 10:
            raise ValueError(f"lags T must be integers >= 10; got {T!r}")
    for lr in lrs or ():
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"learning rates must be > 0; got {lr!r}")
    if seeds is not None and not seeds:
        raise ValueError("seeds must not be empty")
    if budget is not None and not (isinstance(budget, (int, np.integer)) and budget >= 1):
        raise ValueError(f"budget must be an integer >= 1; got {budget!r}")
    if tasks is not None or Ts is not None:
        p["tasks"] = {t: tuple(Ts) if Ts else p["tasks"].get(t, (50, 100))
                      for t in (tasks if tasks is not None else p["tasks"])}
    if cells is not None:
        p["cells"] = tuple(cells)
    p["lrs"] = {c: tuple(lrs) if lrs else p["lrs"].get(c, _GRID) for c in p["cells"]}
    if seeds is not None:
        p["seeds"] = tuple(seeds)
    if budget is not None:
        p["budget_base"], p["budget_per_T"] = int(budget), 0
    return p


def _settings(profile, backend):
    p = _profile(profile)
    keys = ("hidden", "batch", "clip", "optimizer", "dtype", "eval_every", "eval_size",
            "test_size", "recall_length", "flow_batch", "budget_base", "budget_per_T")
    return dict({k: p[k] for k in keys}, backend=backend)


def _key(point, settings):
    blob = json.dumps([asdict(point), settings], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def run_point(point, settings):
    """Train one point (a :class:`Point` with the settings of :func:`_settings`) and return
    its record: a JSON-ready dict of the point, the budget, ``updates_to_criterion`` (None:
    not within the budget), ``reached``, ``updates`` made, ``test_metric``, ``diverged``,
    ``evals`` [(update, validation metric)], the training ``curve`` (loss every
    ``eval_every`` updates), wall time and, for the adding problem, the gradient flow of the
    trained cell (float64 copy of its weights)."""
    from .tasks import make_task
    from threadpoolctl import threadpool_limits

    _pin_device(settings["backend"])
    s = settings
    task = make_task(point.task, point.T,
                     copy_length=s["recall_length"] if point.task in ("recall", "recall_variable") else None)
    cap = int(s["budget_base"] + s["budget_per_T"] * point.T)
    # one BLAS thread: the matrices are tiny (threads only spin), the numbers are the same on
    # every executor, and parallelism comes from running points side by side
    with threadpool_limits(1):
        return _train_point(point, s, task, cap)


def _train_point(point, s, task, cap):
    from .memory import gradient_flow
    from .train import make_cell, train

    r = train(task, point.cell, point.T, cap, batch=s["batch"], hidden=s["hidden"], lr=point.lr,
              seed=point.seed, backend=s["backend"], clip=s["clip"], optimizer=s["optimizer"],
              dtype=s["dtype"], test_size=s["test_size"], eval_every=s["eval_every"],
              eval_size=s["eval_size"], stop_at_criterion=True)
    every = s["eval_every"]
    rec = dict(asdict(point), budget=cap, updates_to_criterion=r.updates_to_criterion,
               reached=r.updates_to_criterion is not None, updates=r.updates,
               passed_test=bool(r.passed), test_metric=float(r.test_metric), test_loss=float(r.test_loss),
               baseline=float(task.baseline), diverged=bool(r.diverged),
               evals=[[int(u), float(m)] for u, _, m in r.evals],
               curve=[float(v) for v in r.curve_loss[every - 1::every]],
               wall_s=float(r.wall_s), batch=s["batch"])
    if point.task == "adding" and not r.diverged:
        m = make_cell(point.cell, 2, s["hidden"], backend=s["backend"], dtype="float64",
                      seed=point.seed, t_max=point.T)
        m.load_state_dict(r.model.state_dict())
        g = gradient_flow(point.cell, point.T, seed=point.seed, batch=s["flow_batch"], model=m)
        rec.update(grad_distance_1e3=int(g["distance_1e3"]),
                   grad_log10_ratio_end=float(g["log10_ratio_end"]))
    return rec


def passed_test(rec):
    """Whether a record's stopped model passed the task's criterion on the held-out test
    sequences (its ``passed_test``; records written before that field existed: the criterion
    applied to their ``test_metric``, a diverged run never passing)."""
    v = rec.get("passed_test")
    if v is not None and v == v:  # NaN: a table row of a record without the field
        return bool(v)
    from .tasks import make_task
    d = rec.get("diverged")
    return make_task(rec["task"], int(rec["T"])).passed(rec["test_metric"]) and not (d == d and bool(d))


def at_criterion(rec):
    """A seed counts toward "solved" only when it reached the criterion on validation within
    the budget and then passed it on the held-out test sequences."""
    return bool(rec["reached"]) and passed_test(rec)


def _pin_device(backend):
    """On a Dask worker with the cupy backend: use device ``worker index % devices``."""
    if backend != "cupy":
        return
    try:
        from distributed import get_worker
        name = get_worker().name
    except (ImportError, ValueError):
        return
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    if n and isinstance(name, int):
        cupy.cuda.Device(name % n).use()


class _Planner:
    """Which points may run, given the results so far (the rules of the module docstring)."""

    def __init__(self, points):
        self.points = sorted(set(points))
        self.seeds = sorted({p.seed for p in self.points})
        self.series = {}  # (task, cell) -> sorted lags
        for p in self.points:
            self.series.setdefault((p.task, p.cell), set()).add(p.T)
        self.series = {k: sorted(v) for k, v in self.series.items()}
        self.lrs = {}
        for p in self.points:
            self.lrs.setdefault((p.task, p.cell), set()).add(p.lr)
        self.results = {}
        self.issued = set()
        self.pruned = set()

    def _lag_points(self, task, cell, T, lrs):
        return [p for p in self.points if (p.task, p.cell, p.T) == (task, cell, T) and p.lr in lrs]

    def _solved_lr(self, task, cell, T, lr):
        recs = [self.results[p] for p in self._lag_points(task, cell, T, {lr})]
        return sum(at_criterion(r) for r in recs) >= seeds_needed(len(recs))

    def _rank(self, task, cell, T, lr):
        """Sort key of a learning rate at a lag: most seeds at the criterion, then the lowest
        median updates to criterion (a seed short of it counting as +inf), then the lr."""
        recs = [self.results[p] for p in self._lag_points(task, cell, T, {lr})]
        u = sorted(r["updates_to_criterion"] if at_criterion(r) else math.inf for r in recs)
        return (-sum(at_criterion(r) for r in recs), statistics.median(u), lr)

    def ready(self):
        """Points that may be issued now (their lag's predecessors are all decided)."""
        out = []
        for (task, cell), lags in self.series.items():
            active = set(self.lrs[(task, cell)])
            failed = 0
            for T in lags:
                pts = self._lag_points(task, cell, T, active)
                if failed >= 2:
                    self.pruned.update(p for p in pts if p not in self.issued)
                    break
                new = [p for p in pts if p not in self.issued and p not in self.pruned]
                out.extend(new)
                if not all(p in self.results for p in pts):
                    break  # this lag is not decided yet: later lags wait
                solved = [lr for lr in sorted(active) if self._solved_lr(task, cell, T, lr)]
                if solved:
                    keep = {min(solved, key=lambda lr: self._rank(task, cell, T, lr))}
                    for T2 in lags[lags.index(T) + 1:]:
                        self.pruned.update(p for p in self._lag_points(task, cell, T2, active - keep)
                                           if p not in self.issued)
                    active = keep
                else:
                    failed += 1
        return out

    def record(self, point, rec):
        self.results[point] = rec


def _client(workers, scheduler, backend):
    from distributed import Client, LocalCluster
    import dask

    address = scheduler or os.environ.get(SCHEDULER_ENV)
    if address:
        return Client(address), None
    if workers is None:
        workers = _default_workers(backend)
    one_thread = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": one_thread}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    return Client(cluster), cluster


def _default_workers(backend):
    if backend == "cupy":
        try:
            import cupy
            return 2 * max(1, cupy.cuda.runtime.getDeviceCount())
        except Exception:
            return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))


def run_sweep(profile="quick", *, tasks=None, cells=None, Ts=None, lrs=None, seeds=None,
              backend="numpy", workers=None, scheduler=None, cache=None, progress=True,
              points=None):
    """Run a profile's grid (with the replacements of :func:`narrow`, or an explicit list of
    ``points``) and return the records of every point that ran, in grid order (see
    :func:`run_point`).

    ``workers=0``: serially in this process. Otherwise on Dask: ``scheduler`` (address) or
    ``$GPULSTM_DASK_SCHEDULER``, else a LocalCluster of ``workers`` processes (None: sized to
    the machine). ``cache``: folder of finished points (module docstring). ``progress``: a
    tqdm bar over the whole grid, refreshed at least every 5 s.
    """
    p = narrow(profile, tasks=tasks, cells=cells, Ts=Ts, lrs=lrs, seeds=seeds)
    settings = _settings(p, backend)
    if points is None:
        points = profile_points(p)
    planner = _Planner(points)
    cache = Path(cache) if cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(planner.points), desc="memory sweep", unit="run", mininterval=1)

    def cached(point):
        if cache is None:
            return None
        f = cache / f"{_key(point, settings)}.json"
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except (OSError, ValueError):
                return None
        return None

    def finish(point, rec):
        planner.record(point, rec)
        if cache is not None:
            f = cache / f"{_key(point, settings)}.json"
            tmp = f.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(rec))
            tmp.replace(f)
        if bar is not None:
            got = "solved" if rec["reached"] else "> budget"
            bar.set_postfix_str(f"{point.task} {point.cell} T={point.T} lr={point.lr:g} "
                                f"seed={point.seed}: {got}", refresh=False)
            bar.update(1)

    def sync_total():
        if bar is not None and bar.total != len(planner.points) - len(planner.pruned):
            bar.total = len(planner.points) - len(planner.pruned)
            bar.refresh()

    client = cluster = None
    try:
        if workers == 0:
            while True:
                todo = [q for q in planner.ready() if q not in planner.issued]
                sync_total()
                if not todo:
                    break
                for q in todo:
                    planner.issued.add(q)
                    finish(q, cached(q) or run_point(q, settings))
        else:
            from distributed import wait
            client, cluster = _client(workers, scheduler, backend)
            running = {}
            while True:
                for q in planner.ready():
                    if q in planner.issued:
                        continue
                    planner.issued.add(q)
                    rec = cached(q)
                    if rec is not None:
                        finish(q, rec)
                        continue
                    running[client.submit(run_point, q, settings, key=f"gpulstm-{_key(q, settings)}",
                                          pure=False)] = q
                sync_total()
                if not running:
                    if not [q for q in planner.ready() if q not in planner.issued]:
                        break
                    continue
                try:  # wake at least every 5 s so the bar's clock moves during long points
                    wait(list(running), timeout=5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    pass
                if bar is not None:
                    bar.refresh()
                for fut in [f for f in list(running) if f.done()]:
                    q = running.pop(fut)
                    finish(q, fut.result())
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    return [planner.results[q] for q in planner.points if q in planner.results]


def summarize(records, n_seeds=None):
    """Per (task, cell, T, lr) and per (task, cell, T): the tables of the report.

    Returns (per_lr, best) as pandas DataFrames. ``per_lr``: seeds run, seeds at criterion
    (``reached``: reached on validation and passed on test, see :func:`at_criterion`),
    ``failed_test`` (seeds that reached on validation but failed the test sequences),
    solved (>= 2/3 of the seeds), the median updates to criterion over all seeds (a seed
    short of the criterion counts as more than the budget; NaN when not solved), min / max
    over the seeds that reached it, budget, median test metric. ``best``: for each (task, cell, T) the best
    learning rate's row (most seeds at criterion, then lowest median updates), with
    ``updates_text`` "N (lo-hi)" or "> budget", ``solved`` and ``lrs_run`` (the learning
    rates that ran at that lag, e.g. "0.0003, 0.001, 0.003, 0.01").
    """
    import pandas as pd

    df = pd.DataFrame(records)
    if df.empty:
        return df, df
    rows = []
    for (task, cell, T, lr), g in df.groupby(["task", "cell", "T", "lr"], sort=True):
        ok = g.apply(lambda r: at_criterion(r.to_dict()), axis=1).astype(bool)
        failed_test = int((g["reached"].astype(bool) & ~ok).sum())
        reached = g.loc[ok, "updates_to_criterion"].astype(float)
        need = seeds_needed(n_seeds or len(g))
        solved = bool(len(reached) >= need)
        # median over every seed, a seed short of the criterion counting as +inf (> budget):
        # a value only when the lr is solved, else a lower bound (NaN here, "> budget" in text)
        allu = sorted(list(reached) + [math.inf] * (len(g) - len(reached)))
        med = statistics.median(allu) if solved else math.nan
        rows.append(dict(task=task, cell=cell, T=T, lr=lr, seeds=len(g), reached=len(reached),
                         failed_test=failed_test, solved=solved, budget=int(g["budget"].max()),
                         updates_median=med,
                         updates_min=float(reached.min()) if len(reached) else math.nan,
                         updates_max=float(reached.max()) if len(reached) else math.nan,
                         sequences_median=med * int(g["batch"].iloc[0]),
                         test_metric_median=float(g["test_metric"].median()),
                         baseline=float(g["baseline"].iloc[0])))
    per_lr = pd.DataFrame(rows)
    best = (per_lr.assign(_r=-per_lr["reached"], _u=per_lr["updates_median"].fillna(math.inf))
            .sort_values(["task", "cell", "T", "_r", "_u", "lr"])
            .groupby(["task", "cell", "T"], sort=True).head(1)
            .drop(columns=["_r", "_u"]).reset_index(drop=True))
    best["updates_text"] = [updates_text(r) for r in best.itertuples()]
    ran = per_lr.groupby(["task", "cell", "T"])["lr"].agg(lambda v: ", ".join(f"{x:g}" for x in sorted(v)))
    best["lrs_run"] = [ran[(r.task, r.cell, r.T)] for r in best.itertuples()]
    return per_lr, best


def updates_wide(best, keys=("cell",)):
    """The best-learning-rate table of :func:`summarize` laid out for reading: one row per
    ``keys``, one column ``T=...`` per lag holding ``updates_text`` (with " @ lr" where the
    lag is solved) or "not run" where the lag did not run."""
    lr = best["lr"].map(lambda v: f" @ {v:g}")
    text = best["updates_text"] + lr.where(best["solved"].astype(bool), "")
    wide = best.assign(_text=text).pivot_table(index=list(keys), columns="T", values="_text",
                                               aggfunc="first").fillna("not run")
    wide.columns = [f"T={int(t)}" for t in wide.columns]
    return wide.reset_index()


def updates_text(row):
    """"median (min-max)" over the seeds that reached the criterion, "> budget" when fewer
    than needed did (a lower bound, never a value)."""
    failed = getattr(row, "failed_test", 0)
    note = f", {failed} reached on validation but failed test" if failed else ""
    if not row.solved:
        got = f"{row.reached}/{row.seeds} seeds reached" if row.reached else ""
        extra = (got + note).lstrip(", ")
        return f"> {int(row.budget)}" + (f" ({extra})" if extra else "")
    text = f"{row.updates_median:.0f} ({row.updates_min:.0f}-{row.updates_max:.0f})"
    return text + (f" [{failed} failed test]" if failed else "")


# -- command line (``gpulstm memory``) --------------------------------------------------------

def _csv(kind, convert):
    def parse(text):
        try:
            return [convert(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{kind} must be a comma-separated list; got {text!r}") from None
    return parse


def add_arguments(p):
    """The ``gpulstm memory`` options (every one validated before anything trains)."""
    p.add_argument("--profile", default="quick", choices=tuple(PROFILES),
                   help="grid and budgets (default: %(default)s)")
    p.add_argument("--task", help="comma-separated tasks (default: the profile's; one of "
                                  "adding, adding_1997, temporal_order, recall, "
                                  "recall_variable, long_lag_2a, copy)")
    p.add_argument("--cell", help="comma-separated cells (default: the profile's; one of "
                                  f"{', '.join(CELLS)})")
    p.add_argument("--T", help="comma-separated lags (default: the profile's per task)")
    p.add_argument("--lr", help="comma-separated learning rates (default: the profile's grid "
                                "per cell)")
    p.add_argument("--seeds", type=int, help="number of seeds 0..N-1 (default: the profile's)")
    p.add_argument("--budget", type=int, default=None,
                   help="updates allowed at every lag (default: the profile's, growing with T)")
    p.add_argument("--backend", default=None,
                   help="numpy, cpu (compiled), emulated or cupy (default: cpu where it "
                        "builds, else numpy)")
    p.add_argument("--workers", type=int, default=None,
                   help="Dask LocalCluster worker processes; 0 = serial in this process "
                        "(default: one per core, 2 per GPU)")
    p.add_argument("--scheduler", default=None,
                   help=f"address of an existing Dask scheduler (default: ${SCHEDULER_ENV}, "
                        "else a LocalCluster)")
    p.add_argument("--cache", default=None,
                   help="folder of finished points to reuse (default: none)")


def run_from_args(args, out=None):
    """Validate ``args`` (from :func:`add_arguments`), run the sweep with a progress bar and
    print the updates-to-criterion table per task. Returns 0."""
    from ..backends import get_backend

    out = out or sys.stdout
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {args.seeds}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0; got {args.workers}")
    p = narrow(args.profile, tasks=_csv("--task", str)(args.task) if args.task else None,
               cells=_csv("--cell", str)(args.cell) if args.cell else None,
               Ts=_csv("--T", int)(args.T) if args.T else None,
               lrs=_csv("--lr", float)(args.lr) if args.lr else None,
               seeds=range(args.seeds) if args.seeds is not None else None,
               budget=args.budget)
    tasks, cells = list(p["tasks"]), list(p["cells"])
    backend = args.backend or default_memory_backend()
    get_backend(backend)  # unknown or unavailable: its own clear error, before training
    recs = run_sweep(p, backend=backend, workers=args.workers, scheduler=args.scheduler,
                     cache=args.cache, progress=True)
    _, best = summarize(recs, len(p["seeds"]))
    for task in tasks:
        b = best[best["task"] == task]
        if b.empty:
            continue
        print(f"\n{task}: Adam updates to criterion (median over {len(p['seeds'])} seeds, "
              f"best learning rate; '> N' = not within the budget of N updates)", file=out)
        print(updates_wide(b).to_string(index=False), file=out)
    return 0

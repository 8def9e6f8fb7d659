"""Dask scaling of the memory sweep: updates per second per worker, 1 vs 2 workers.

    python bench/dask_scaling.py [--out docs] [--figure docs/dask_scaling.png]
        [--backend cpu] [--repeats 2]

Runs the same fixed grid (adding T = 50 and 100, the quick profile's five cells, seeds 0-2,
lr 0.01, a budget of 400 updates, no cache) through :func:`gpulstm.lab.sweep.run_sweep` on a
``distributed.LocalCluster`` of 1 and of 2 single-threaded workers, ``--repeats`` times each
(best run kept), and writes the measurement record (JSON: machine, cores, load average before
each run, per run the wall time, the updates made and updates/s per worker) and the figure.
A measurement: its numbers depend on the machine and on what else runs there.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from gpulstm.lab.sweep import PROFILES, narrow, run_sweep

CELLS = ("lstm_fb1", "lstm_nofg", "gru", "rnn_tanh", "irnn")


def measure(workers, backend, repeats):
    p = narrow(PROFILES["quick"], tasks=["adding"], Ts=[50, 100], cells=CELLS, lrs=[1e-2],
               budget=400)
    runs = []
    for _ in range(repeats):
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        recs = run_sweep(p, backend=backend, workers=workers, progress=False)
        wall = time.perf_counter() - t0
        updates = sum(r["updates"] for r in recs)
        runs.append(dict(wall_s=wall, points=len(recs), updates=updates, load_before=load,
                         updates_per_s_per_worker=updates / wall / workers))
    return dict(workers=workers, runs=runs, best=min(runs, key=lambda r: r["wall_s"]))


def plot(record, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8.5, 3.6))
    FigureCanvasAgg(fig)
    a, b = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ws = [m["workers"] for m in record["measurements"]]
    per = [m["best"]["updates_per_s_per_worker"] for m in record["measurements"]]
    wall = [m["best"]["wall_s"] for m in record["measurements"]]
    a.bar([str(w) for w in ws], per, color="tab:blue")
    a.set_xlabel("Dask workers (1 thread each)")
    a.set_ylabel("updates / s per worker")
    a.set_title("throughput per worker")
    speed = [wall[0] / w for w in wall]
    b.plot(ws, speed, "o-", label="measured")
    b.plot(ws, ws, ":", color="0.4", label="ideal")
    b.set_xticks(ws)
    b.set_xlabel("Dask workers")
    b.set_ylabel("speed-up over 1 worker")
    b.set_title("sweep wall-time speed-up")
    b.legend(frameon=False)
    fig.suptitle(f"memory sweep on {record['machine']} ({record['cores']} cores, backend "
                 f"{record['backend']}; best of {record['repeats']})", fontsize="medium")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs")
    ap.add_argument("--figure", default="docs/dask_scaling.png")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--machine", default=platform.node())
    args = ap.parse_args(argv)
    record = dict(machine=args.machine, cores=os.cpu_count(), backend=args.backend,
                  repeats=args.repeats, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  measurements=[measure(w, args.backend, args.repeats) for w in (1, 2)])
    one, two = (m["best"]["wall_s"] for m in record["measurements"])
    record["speedup_2_workers"] = one / two
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"dask_scaling-{args.machine}.json"
    f.write_text(json.dumps(record, indent=1) + "\n")
    plot(record, args.figure)
    print(f, args.figure, f"speed-up {record['speedup_2_workers']:.2f}")


if __name__ == "__main__":
    main()

"""Every time-loop algorithm vs cuDNN, for tools/gpu_check.sh (step "algos"): FP32 LSTM forward
and forward+backward, gpulstm ``algo`` in stepwise / fused / fused with CUDA graphs
(``cuda_graphs=True``, row "fused+graphs"; the graphs captured in the warm-up call, so the
timed calls replay them) / persistent (where it applies), and stepwise with ``allow_tf32=True``
(row "stepwise+tf32": every cuBLAS GEMM on TF32 tensor cores, the fair peer of cuDNN with
TF32) vs
cuDNN through torch.nn.LSTM with TF32 off and on, timed with CUDA events after warm-up; each
gpulstm row also checks its output against cuDNN's (TF32 off) and shows the performance
model's prediction (gpulstm.perfmodel) next to the measurement.

    python tools/gpu_algos.py OUT_DIR [--budget-s 120] [--reps 3] [--backend cupy]

Grid (the issue's): B in {1, 8, 64}, H in {128, 512, 1024}, T in {100, 1000}, input size = H,
smallest first; when the budget is spent the rest are listed as skipped. Writes
OUT_DIR/algos.json. ``--backend emulated --tiny`` runs the same code on the CPU (CI smoke).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

GRID = sorted(((T, B, H) for T in (100, 1000) for B in (1, 8, 64) for H in (128, 512, 1024)),
              key=lambda s: s[0] * s[1] * s[2] * s[2])
TINY = [(3, 2, 8)]
ALGOS = ("stepwise", "stepwise+tf32", "fused", "fused+graphs", "persistent")


def _timer(backend):
    """(time(fn) -> median ms, sync) for the backend."""
    if backend == "cupy":
        import cupy as cp
        from gpu_speed import time_events
        sync = cp.cuda.get_current_stream().synchronize
        return (lambda fn, reps: time_events(fn, cp.cuda.Event(), cp.cuda.Event(), sync, reps)[0]), sync

    def wall(fn, reps):
        fn()
        ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ms.append(1e3 * (time.perf_counter() - t0))
        return float(np.median(ms))
    return wall, lambda: None


def run_ours(backend, algo, T, B, H, reps, timer):
    import gpulstm as gl
    from gpulstm.backends.kernel_loop import persistent_plan
    algo, *options = algo.split("+")
    graphs = "graphs" in options
    m = gl.LSTM(H, H, backend=backend, dtype="float32", seed=0, algo=algo, cuda_graphs=graphs,
                allow_tf32="tf32" in options)
    if algo == "persistent":
        limits = m.ex.device_limits()
        if persistent_plan(B, H, 4, 4, *limits) is None:
            return None  # runs fused: not a persistent row
    rng = np.random.default_rng(0)
    x = m.ex.asarray(rng.standard_normal((T, B, H), dtype=np.float32), np.float32)
    gy = m.ex.asarray(rng.standard_normal((T, B, H), dtype=np.float32), np.float32)

    def fb():
        m(x)
        m.backward(gy)
    row = {"forward_ms": timer(lambda: m(x), reps), "forward+backward_ms": timer(fb, reps)}
    row["y"] = m.ex.to_numpy(m(x)[0])
    row["state"] = {k: m.ex.to_numpy(v) for k, v in m.state_dict().items()}
    if graphs:
        row["graphs"] = m.ex.graph_pool.stats()  # captures once per phase, then replays
    return row


def run_cudnn(state, T, B, H, reps, tf32):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    lstm = torch.nn.LSTM(H, H).cuda()
    lstm.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((T, B, H), dtype=np.float32), device="cuda", requires_grad=True)
    gy = torch.tensor(rng.standard_normal((T, B, H), dtype=np.float32), device="cuda")
    from gpu_speed import time_events
    ev = lambda: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
    sync = torch.cuda.synchronize

    def fb():
        y, _ = lstm(x)
        y.backward(gy)
    with torch.no_grad():
        y = lstm(x)[0].cpu().numpy()
    return {"forward_ms": time_events(lambda: lstm(x), *ev(), sync, reps)[0],
            "forward+backward_ms": time_events(fb, *ev(), sync, reps)[0], "y": y}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--budget-s", type=float, default=120)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backend", default="cupy")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args(argv)
    import gpulstm as gl
    from gpulstm.perfmodel import predict
    timer, _ = _timer(a.backend)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + a.budget_s
    rows, skipped = [], []
    cudnn = a.backend == "cupy"
    print(f"{'T':>5} {'B':>3} {'H':>5} {'impl':22} {'fwd ms':>9} {'fwd+bwd ms':>11} "
          f"{'us/step':>8} {'model us/step':>13} {'max|y-cudnn|':>12}")
    for T, B, H in (TINY if a.tiny else GRID):
        if time.monotonic() > deadline:
            skipped.append((T, B, H))
            continue
        model = predict(gl.LSTM(H, H, backend="numpy"), np.zeros((T, B, H), np.float32), "H200")
        ref = None
        results = {}
        for algo in ALGOS:
            r = run_ours(a.backend, algo, T, B, H, a.reps, timer)
            if r is not None:
                results[algo] = r
        if cudnn:
            state = next(iter(results.values()))["state"]
            results["cudnn"] = run_cudnn(state, T, B, H, a.reps, tf32=False)
            results["cudnn-tf32"] = run_cudnn(state, T, B, H, a.reps, tf32=True)
            ref = results["cudnn"]["y"]
        for impl, r in results.items():
            err = float(np.abs(r["y"] - ref).max()) if ref is not None else float("nan")
            m = model.get(impl, {}).get("us_per_step", float("nan"))
            row = dict(T=T, B=B, H=H, impl=impl, forward_ms=r["forward_ms"],
                       forward_backward_ms=r["forward+backward_ms"],
                       us_per_step=1e3 * r["forward+backward_ms"] / T, model_us_per_step=m,
                       max_abs_diff_vs_cudnn=err)
            if "graphs" in r:
                row["graph_stats"] = r["graphs"]
            rows.append(row)
            print(f"{T:5d} {B:3d} {H:5d} {impl:22} {row['forward_ms']:9.3f} "
                  f"{row['forward_backward_ms']:11.3f} {row['us_per_step']:8.2f} {m:13.2f} {err:12.2e}")
    (out / "algos.json").write_text(json.dumps(
        {"backend": a.backend, "model": "gpulstm.perfmodel H200 (a model, not a measurement)",
         "rows": rows, "skipped": skipped}, indent=1))
    if skipped:
        print(f"skipped (budget): {skipped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

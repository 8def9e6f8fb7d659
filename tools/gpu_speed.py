"""Speed table for tools/gpu_check.sh: LSTM forward and forward+backward, gpulstm "cupy" vs
cuDNN through torch.nn.LSTM (TF32 off and on), timed with CUDA events after warm-up.

    python tools/gpu_speed.py OUT_DIR [--budget-s 150] [--reps 3]

Shapes: T in {16, 128, 1024}, B in {1, 64}, H in {256, 1024}, input size = H, float32.
Writes OUT_DIR/speed.csv and OUT_DIR/speed.json (rows + device and versions); prints a table.
Shapes run from small to large; when the time budget is spent the rest are skipped (listed).
"""
import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

SHAPES = [(T, B, H) for T in (16, 128, 1024) for B in (1, 64) for H in (256, 1024)]
SHAPES.sort(key=lambda s: s[0] * s[1] * s[2] * s[2])


def time_events(fn, start, end, sync, reps, warmup=1):
    """Median and min milliseconds of ``fn`` between two CUDA events, after warm-up."""
    for _ in range(warmup):
        fn()
    sync()
    ms = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        ms.append(start_end_ms(start, end))
    return float(np.median(ms)), float(min(ms))


def start_end_ms(start, end):
    try:  # torch.cuda.Event
        return start.elapsed_time(end)
    except AttributeError:  # cupy.cuda.Event
        import cupy as cp
        return cp.cuda.get_elapsed_time(start, end)


def ours(T, B, H, reps):
    import cupy as cp
    import gpulstm as gl
    m = gl.LSTM(H, H, backend="cupy", dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((T, B, H), dtype=np.float32))
    gy = cp.asarray(rng.standard_normal((T, B, H), dtype=np.float32))
    sync = cp.cuda.get_current_stream().synchronize
    ev = lambda: (cp.cuda.Event(), cp.cuda.Event())

    def fb():
        m(x)
        m.backward(gy)
    return {"forward": time_events(lambda: m(x), *ev(), sync, reps),
            "forward+backward": time_events(fb, *ev(), sync, reps)}


def cudnn(T, B, H, reps, tf32):
    import torch
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    m = torch.nn.LSTM(H, H).cuda()
    x = torch.randn(T, B, H, device="cuda", requires_grad=True)
    gy = torch.randn(T, B, H, device="cuda")
    sync = torch.cuda.synchronize
    ev = lambda: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def fwd():
        with torch.no_grad():
            m(x)

    def fb():
        y, _ = m(x)
        y.backward(gy)
    return {"forward": time_events(fwd, *ev(), sync, reps),
            "forward+backward": time_events(fb, *ev(), sync, reps)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--budget-s", type=float, default=150)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    impls = [("gpulstm-cupy", "n/a", lambda T, B, H: ours(T, B, H, a.reps))]
    try:
        import torch
        if torch.cuda.is_available():
            impls += [("torch-cudnn", "off", lambda T, B, H: cudnn(T, B, H, a.reps, False)),
                      ("torch-cudnn", "on", lambda T, B, H: cudnn(T, B, H, a.reps, True))]
    except ImportError:
        print("torch not installed: no cuDNN rows")
    rows, skipped = [], []
    for T, B, H in SHAPES:
        if time.monotonic() - t0 > a.budget_s:
            skipped.append((T, B, H))
            continue
        for impl, tf32, fn in impls:
            try:
                res = fn(T, B, H)
            except Exception as e:  # record and go on (e.g. out of memory)
                rows.append(dict(impl=impl, tf32=tf32, pass_="error", T=T, B=B, H=H, I=H,
                                 dtype="float32", median_ms=None, min_ms=None, reps=a.reps,
                                 error=f"{type(e).__name__}: {e}"[:300]))
                continue
            for p, (med, mn) in res.items():
                rows.append(dict(impl=impl, tf32=tf32, pass_=p, T=T, B=B, H=H, I=H, dtype="float32",
                                 median_ms=round(med, 4), min_ms=round(mn, 4), reps=a.reps, error=""))
    for r in rows:
        r["pass"] = r.pop("pass_")
    fields = ["impl", "tf32", "pass", "T", "B", "H", "I", "dtype", "median_ms", "min_ms", "reps", "error"]
    with open(a.out / "speed.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    meta = {"timing": "CUDA events around each call after 1 warm-up call; median of reps",
            "skipped_shapes_budget": skipped}
    try:
        import torch
        meta["device"] = torch.cuda.get_device_name()
    except Exception:
        pass
    (a.out / "speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    # short table: one line per shape and pass
    print(f"{'T':>5} {'B':>3} {'H':>5} {'pass':17} {'gpulstm':>9} {'cudnn':>9} {'cudnn-tf32':>10}  (ms)")
    key = lambda r: (r["T"], r["B"], r["H"], r["pass"])
    table = {}
    for r in rows:
        table.setdefault(key(r), {})[(r["impl"], r["tf32"])] = r["median_ms"]
    for (T, B, H, p), d in table.items():
        f = lambda k: "-" if d.get(k) is None else f"{d[k]:.3f}"
        print(f"{T:>5} {B:>3} {H:>5} {p:17} {f(('gpulstm-cupy', 'n/a')):>9} "
              f"{f(('torch-cudnn', 'off')):>9} {f(('torch-cudnn', 'on')):>10}")
    if skipped:
        print(f"skipped (time budget {a.budget_s:.0f} s): {skipped}")
    errors = sorted({(r["impl"], r["error"]) for r in rows if r["error"]})
    for impl, err in errors:
        print(f"error {impl}: {err}")
    ours_ok = any(r["impl"] == "gpulstm-cupy" and not r["error"] for r in rows)
    return 0 if ours_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

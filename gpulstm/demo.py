"""A short demo: one LSTM forward + backward on the best backend here, with shapes and timing.

    python -m gpulstm.demo [--backend auto|numpy|cupy|emulated]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import gpulstm as gl


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("-T", type=int, default=100)
    ap.add_argument("-B", type=int, default=32)
    ap.add_argument("-I", type=int, default=128)
    ap.add_argument("-H", type=int, default=256)
    a = ap.parse_args(argv)
    m = gl.LSTM(a.I, a.H, backend=a.backend, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.T, a.B, a.I)).astype(np.float32)
    gy = rng.standard_normal((a.T, a.B, a.H)).astype(np.float32)
    print(f"gpulstm {gl.__version__}: backend {m.backend!r} (available: "
          f"{', '.join(k for k, v in gl.available_backends().items() if v is None)})")
    print(m)
    for label in ("warm-up", "timed"):
        t0 = time.perf_counter()
        y, (h_n, c_n) = m(x)
        m.ex.synchronize()
        t1 = time.perf_counter()
        dx = m.backward(gy)
        m.ex.synchronize()
        t2 = time.perf_counter()
    print(f"x {tuple(x.shape)} -> out {tuple(y.shape)}, h_n {tuple(h_n.shape)}, c_n {tuple(c_n.shape)}")
    print(f"backward: dx {tuple(dx.shape)}, grads: " +
          ", ".join(f"{k} {tuple(v.shape)}" for k, v in m.grads.items()))
    flops = 8 * a.T * a.B * a.H * (a.I + a.H)
    print(f"forward {1e3 * (t1 - t0):.1f} ms ({flops / (t1 - t0) / 1e9:.1f} GFLOP/s), "
          f"backward {1e3 * (t2 - t1):.1f} ms, {1e6 * (t2 - t0) / a.T:.0f} us per time step")


if __name__ == "__main__":
    main()

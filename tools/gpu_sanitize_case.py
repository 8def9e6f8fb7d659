"""A small forward + backward of every cell and option on the cupy backend, with every
time-loop algorithm (stepwise, fused, persistent), for compute-sanitizer (memcheck, racecheck)
in tools/gpu_check.sh.

CuPy's memory pool is switched off so that every array is its own cudaMalloc and memcheck sees
an access past an array's end. Exit status 0 when everything ran.
"""
import numpy as np

import cupy as cp

import gpulstm as gl

cp.cuda.set_allocator(None)
rng = np.random.default_rng(0)
T, B, I, H = 4, 3, 5, 37
lengths = np.array([4, 1, 3])
cases = [
    ("LSTM", {}),
    ("LSTM", {"forget_gate": False, "peephole": True}),
    ("LSTM", {"proj_size": 7, "peephole": True, "bidirectional": True}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("RNN", {"nonlinearity": "tanh"}),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}),
]
for algo, dtype in [(a, d) for a in ("stepwise", "fused", "persistent") for d in ("float32", "float64")]:
    for cls, kw in cases:
        m = getattr(gl, cls)(I, H, **kw, backend="cupy", dtype=dtype, algo=algo)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        out = m(x, lengths=lengths)
        y = out[0]
        m.backward(cp.ones_like(y))
        cp.cuda.get_current_stream().synchronize()
        print(f"ok {cls} {kw} {dtype} {algo}")

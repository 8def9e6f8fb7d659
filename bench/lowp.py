"""bfloat16 storage vs float32 on the CPU executions (issue 27): forward (inference) and training
(forward + BPTT) time, and peak memory of training, of the same module in both dtypes.

``dtype="bfloat16"`` stores every buffer in bf16 and computes in float32
(:mod:`gpulstm.lowp`); on ``numpy`` and ``cpu`` it runs the engine's stepwise loop (the cpu
execution's compiled loop is float32/float64 only), so it is expected to be slower than
float32 there, most at small sizes (per-step Python work and the widening copies); what it
saves is memory (half the bytes of the saved history).
"""
import numpy as np

import gpulstm as gl

SHAPES = ("100x32x64x64", "100x8x256x256")  # T x B x I x H
CELLS = ("lstm", "gru")
BACKENDS = ("numpy", "cpu")
DTYPES = ("float32", "bfloat16")


def parse(shape):
    return tuple(int(v) for v in shape.split("x"))


_cache = {}


def workload(shape, cell, backend, dtype):
    """(module, x, grad) built once per process (asv re-runs setup before every sample)."""
    key = (shape, cell, backend, dtype)
    if key not in _cache:
        T, B, I, H = parse(shape)
        try:
            gl.get_backend(backend)
        except gl.BackendUnavailable as e:
            raise NotImplementedError(f"backend {backend!r} unavailable: {e}") from None
        m = getattr(gl, cell.upper())(I, H, backend=backend, dtype=dtype, seed=0)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((T, B, I)).astype(m.dtype)
        g = rng.standard_normal((T, B, H)).astype(m.dtype)
        m.train()
        m(x)
        m.backward(g)  # warm-up: build, allocate
        _cache[key] = (m, x, g)
    return _cache[key]


class Bf16VsFloat32:
    """One LSTM / GRU layer at two (T, B, I, H) shapes on the CPU executions, float32 and
    bfloat16: time of an inference forward and of a training step (forward + backward), peak
    memory of the training step."""
    params = [list(SHAPES), list(CELLS), list(BACKENDS), list(DTYPES)]
    param_names = ["shape", "cell", "backend", "dtype"]
    number = 1
    repeat = (1, 5, 20.0)
    timeout = 600

    def setup(self, shape, cell, backend, dtype):
        self.m, self.x, self.g = workload(shape, cell, backend, dtype)

    def time_forward(self, shape, cell, backend, dtype):
        self.m.eval()
        self.m(self.x)
        self.m.train()

    def time_training(self, shape, cell, backend, dtype):
        self.m(self.x)
        self.m.backward(self.g)

    def peakmem_training(self, shape, cell, backend, dtype):
        self.m(self.x)
        self.m.backward(self.g)

"""Shared helpers of the benchmark suite: backends, grid profiles, FLOP counts, timing.

The SciPy ``benchmarks/common.py`` pattern: every speed benchmark takes a ``backend``
parameter and builds its work through :func:`make_workload`, which raises
``NotImplementedError`` (asv's skip) with the reason when the backend cannot run here; the
returned callables synchronize the device before they return, so a timed call includes the
GPU work it launched. Optional imports are guarded here and nowhere else.

Backends (``backend`` parameter values):

================== ===========================================================================
numpy              gpulstm on NumPy (BLAS GEMMs, the reference pointwise steps)
cpu                gpulstm's compiled CPU execution (whole time loop in C++, OpenMP)
cupy               gpulstm on CuPy (cuBLAS GEMMs, the CUDA kernels in ``kernels/``)
emulated           gpulstm's CUDA kernels emulated on the CPU: correctness only, not in the
                   default grids (GPULSTM_BENCH_BACKENDS=emulated,... to time it anyway)
torch-cpu          ``torch.nn.LSTM/GRU/RNN`` on the CPU (oneDNN): numpy's reference
torch-cudnn        ``torch.nn.*`` on CUDA through cuDNN, TF32 off (IEEE FP32): cupy's reference
torch-cudnn-tf32   the same with TF32 allowed in cuDNN RNNs and GEMMs (full profile only)
================== ===========================================================================

Grid profiles (environment variable ``GPULSTM_BENCH_PROFILE``, read at import because asv
computes parameter lists at import):

- ``quick`` (default; 2 CPU cores: bench/speed took 2.8 minutes with asv's overhead on an idle
  2-core AMD EPYC VM, numpy + torch-cpu; a busy machine can take 3x): sequence-length sweep
  T in {10, 50, 100, 500} at B=16, H=I=256 for rnn_tanh, lstm, gru and the plug-in cells cifg
  and indrnn (gpulstm's backends only: torch.nn has no twin); batch x hidden sweep at
  T=50: B in {1, 32} x H in {128, 512}, lstm only; one asv round, 3-10 samples.
- ``full`` (GPU machines): T in {10, 50, 100, 500, 1000, 2000} at B=16, H=I=256; B in
  {1, 16, 64, 256} x H in {128, 256, 512, 1024} at T=100, all three cells; torch-cudnn-tf32
  rows added; two asv rounds, 5-20 samples.

FLOPs per layer and direction (docs/design.md, "Reference numbers"): forward 2*G*T*B*H*(I+H) with G
gates (LSTM 4 -> 8TBH(I+H), GRU 3, CIFG 3, RNN 1; IndRNN 2TBH(I+1), its recurrence is
elementwise); a training step (forward + backward) about 3x that.
"""
from __future__ import annotations

import contextlib
import functools
import os
import time

import numpy as np

import gpulstm as gl

# PyTorch is imported here, at import: asv's forkserver imports the suite once and forks one
# process per benchmark, so no process pays the import again. Importing torch does not touch
# CUDA. CuPy is imported only by gpulstm.get_backend("cupy"), when a cupy benchmark asks.
try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None
try:  # limits the BLAS and OpenMP pools of the process (the thread-count benchmarks)
    import threadpoolctl
except ImportError:  # pragma: no cover - optional
    threadpoolctl = None

CELLS = ("rnn_tanh", "lstm", "gru")
#: cells brought through the plug-in (no torch.nn twin: timed on gpulstm's backends only)
PLUGIN_CELLS = ("cifg", "indrnn")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3, "cifg": 3, "indrnn": 1}
GPULSTM_BACKENDS = ("numpy", "cpu", "cupy", "emulated")
TORCH_BACKENDS = ("torch-cpu", "torch-cudnn", "torch-cudnn-tf32")
# The PyTorch reference of each backend, timed in the same process for the speed ratios.
REFERENCE = {"numpy": "torch-cpu", "cpu": "torch-cpu", "emulated": "torch-cpu", "cupy": "torch-cudnn",
             "torch-cudnn-tf32": "torch-cudnn"}

PROFILES = {
    "quick": {
        "T": (10, 50, 100, 500), "seq_B": 16, "seq_H": 256, "seq_cells": CELLS + PLUGIN_CELLS,
        "bh_T": 50, "bh_B": (1, 32), "bh_H": (128, 512), "bh_cells": ("lstm",),
        "backends": ("numpy", "cpu", "cupy", "torch-cpu", "torch-cudnn"),
        "rounds": 1, "repeat": (3, 10, 1.0), "track_repeat": 5,
    },
    "full": {
        "T": (10, 50, 100, 500, 1000, 2000), "seq_B": 16, "seq_H": 256,
        "seq_cells": CELLS + PLUGIN_CELLS,
        "bh_T": 100, "bh_B": (1, 16, 64, 256), "bh_H": (128, 256, 512, 1024), "bh_cells": CELLS,
        "backends": ("numpy", "cpu", "cupy", "torch-cpu", "torch-cudnn", "torch-cudnn-tf32"),
        "rounds": 2, "repeat": (5, 20, 4.0), "track_repeat": 5,
    },
}


def _profile():
    name = os.environ.get("GPULSTM_BENCH_PROFILE", "quick")
    if name not in PROFILES:
        raise ValueError(f"GPULSTM_BENCH_PROFILE must be one of {tuple(PROFILES)}; got {name!r}")
    grid = dict(PROFILES[name])
    override = os.environ.get("GPULSTM_BENCH_BACKENDS")
    if override:
        names = tuple(b.strip() for b in override.split(",") if b.strip())
        unknown = [b for b in names if b not in GPULSTM_BACKENDS + TORCH_BACKENDS]
        if unknown:
            raise ValueError(f"GPULSTM_BENCH_BACKENDS names unknown backends {unknown}; "
                             f"expected some of {GPULSTM_BACKENDS + TORCH_BACKENDS}")
        grid["backends"] = names
    return name, grid


PROFILE_NAME, GRID = _profile()


def flops(cell, T, B, I, H, training=False):
    """FLOPs of one layer, one direction: forward 2*G*T*B*H*(I+H) (IndRNN: 2*T*B*H*(I+1), its
    recurrence is elementwise); training 3x forward."""
    recurrent = 1 if cell == "indrnn" else H
    return 2 * GATES[cell] * T * B * H * (I + recurrent) * (3 if training else 1)


class Workload:
    """One cell on one backend with its inputs in place, ready to time.

    ``forward()`` runs inference over x [T,B,I]; ``forward_backward()`` runs a training step's
    forward and BPTT (dL/dx and the weight gradients, from a fixed dL/dy). Both synchronize the
    device before they return. ``synchronize`` is the backend's own barrier.
    """

    def __init__(self, backend, cell, T, B, I, H, forward, forward_backward, synchronize):
        self.backend, self.cell, self.T, self.B, self.I, self.H = backend, cell, T, B, I, H
        self.forward = forward
        self.forward_backward = forward_backward
        self.synchronize = synchronize

    def run(self, mode):
        """mode "forward" or "training"."""
        return self.forward() if mode == "forward" else self.forward_backward()

    def __repr__(self):
        return (f"<Workload {self.backend} {self.cell} T={self.T} B={self.B} I={self.I} "
                f"H={self.H}>")


def make_workload(backend, cell, T, B, H, I=None, seed=0, warmup=True):
    """Build (and by default warm up: compile, allocate, one call of each) a :class:`Workload`.

    Raises NotImplementedError with the reason when ``backend`` cannot run on this machine,
    ValueError for an unknown backend or cell.
    """
    I = H if I is None else I
    if cell not in GATES:
        raise ValueError(f"unknown cell {cell!r}; expected one of {tuple(GATES)}")
    if backend in GPULSTM_BACKENDS:
        w = _gpulstm_workload(backend, cell, T, B, I, H, seed)
    elif backend in TORCH_BACKENDS:
        w = _torch_workload(backend, cell, T, B, I, H, seed)
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of "
                         f"{GPULSTM_BACKENDS + TORCH_BACKENDS}")
    if warmup:
        w.forward()
        w.forward_backward()
    return w


@functools.lru_cache(maxsize=4)
def cached_workload(backend, cell, T, B, H, I=None, seed=0):
    """:func:`make_workload`, memoized per process: asv re-runs ``setup`` before every timing
    sample, and the workload is read-only for the timed calls, so it is built and warmed once."""
    return make_workload(backend, cell, T, B, H, I, seed)


def _gpulstm_workload(backend, cell, T, B, I, H, seed):
    try:
        ex = gl.get_backend(backend)
    except gl.BackendUnavailable as e:
        raise NotImplementedError(f"backend {backend!r} unavailable: {e}") from None
    except ImportError as e:  # the backend's module or its library is not installed
        raise NotImplementedError(f"backend {backend!r} unavailable: {e}") from None
    if cell in ("lstm", "gru", "cifg"):
        m = getattr(gl, cell.upper())(I, H, backend=backend, dtype="float32", seed=seed)
    elif cell == "indrnn":
        m = gl.IndRNN(I, H, backend=backend, dtype="float32", seed=seed)
    else:
        m = gl.RNN(I, H, nonlinearity=cell.split("_")[1], backend=backend, dtype="float32",
                   seed=seed)
    rng = np.random.default_rng(seed)
    x = ex.asarray(rng.standard_normal((T, B, I)), np.float32)
    g = ex.asarray(rng.standard_normal((T, B, H)), np.float32)
    sync = ex.synchronize

    def forward():
        m.eval()
        m(x)
        sync()

    def forward_backward():
        m.train()
        m(x)
        m.backward(g)
        sync()

    return Workload(backend, cell, T, B, I, H, forward, forward_backward, sync)


def _set_tf32(on):
    """TF32 in cuDNN RNNs and CUDA GEMMs on or off (PyTorch's fp32_precision API when it has
    it; the legacy allow_tf32 flags otherwise; the two must not be mixed)."""
    precision = "tf32" if on else "ieee"
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        rnn.fp32_precision = precision
        torch.backends.cuda.matmul.fp32_precision = precision
    else:  # pragma: no cover - older PyTorch
        torch.backends.cudnn.allow_tf32 = on
        torch.backends.cuda.matmul.allow_tf32 = on


def _torch_workload(backend, cell, T, B, I, H, seed):
    if torch is None:
        raise NotImplementedError(f"backend {backend!r} unavailable: torch is not installed")
    if cell in PLUGIN_CELLS:
        raise NotImplementedError(f"{cell}: torch.nn has no such cell (timed on gpulstm's "
                                  "backends only)")
    if backend == "torch-cpu":
        device = torch.device("cpu")

        def sync():
            pass

        def precision():
            pass
    else:
        if not torch.cuda.is_available():
            raise NotImplementedError(f"backend {backend!r} unavailable: PyTorch sees no CUDA "
                                      f"device (torch {torch.__version__})")
        if not torch.backends.cudnn.is_available():
            raise NotImplementedError(f"backend {backend!r} unavailable: PyTorch has no cuDNN")
        torch.backends.cudnn.enabled = True
        device = torch.device("cuda")
        sync = torch.cuda.synchronize
        tf32 = backend == "torch-cudnn-tf32"

        def precision():  # process-global flags: set before every call (they are cheap)
            _set_tf32(tf32)
    precision()
    torch.manual_seed(seed)
    if cell == "lstm":
        mod = torch.nn.LSTM(I, H)
    elif cell == "gru":
        mod = torch.nn.GRU(I, H)
    else:
        mod = torch.nn.RNN(I, H, nonlinearity=cell.split("_")[1])
    mod = mod.to(device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    g = torch.randn(T, B, H, device=device)

    def forward():
        precision()
        with torch.inference_mode():
            mod(x)
        sync()

    def forward_backward():
        precision()
        mod.zero_grad(set_to_none=True)
        x.grad = None
        y, _ = mod(x)
        y.backward(g)
        sync()

    return Workload(backend, cell, T, B, I, H, forward, forward_backward, sync)


def best_seconds(fns, repeat=3, min_sample=0.02, settle=0.1):
    """timeit-style minimum seconds per call of each callable in ``fns`` ({name: fn}).

    One callable after the other: a first call (after another library's work) calibrates
    ``number``, the calls per sample, so that a sample lasts at least ``min_sample`` s; then
    ``repeat`` samples. Returns {name: min over samples of sample time / number}.
    Not interleaved: on a CPU the spinning worker threads of one library (OpenBLAS, OpenMP)
    slow the next call of the other; PyTorch's LSTM lost 2x that way on 2 cores. For the same
    reason each callable starts after ``settle`` seconds of sleep: OpenBLAS's idle workers
    spin (yielding) for 2^28 cycles, ~0.07 s, before they sleep. Measured on 2 cores right
    after NumPy's BLAS, without it: PyTorch's LSTM forward at B=1 0.47 ms instead of 0.30
    (training 1.7-1.9 ms instead of 0.9); in the asv suite gpulstm's cpu forward at B=1 (a
    barrier per step, timed after NumPy's) 1.36x PyTorch's time instead of 0.77x.
    """
    best = {}
    for name, fn in fns.items():
        if settle:
            time.sleep(settle)  # the previous library's worker threads go idle
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        n = max(1, int(np.ceil(min_sample / dt))) if dt > 0 else 100
        best[name] = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / n)
    return best


@contextlib.contextmanager
def thread_limit(n):
    """Run the block with every thread pool of the process limited to ``n`` threads: BLAS and
    OpenMP (threadpoolctl), PyTorch's intra-op pool and gpulstm's cpu execution. Raises
    NotImplementedError (asv's skip) without threadpoolctl: NumPy's BLAS could not be limited."""
    if threadpoolctl is None:
        raise NotImplementedError("thread-count benchmarks need threadpoolctl "
                                  "(pip install threadpoolctl) to limit NumPy's BLAS threads")
    from gpulstm.backends import cpu as cpu_execution  # the setting only; builds nothing
    old_torch = torch.get_num_threads() if torch is not None else None
    old_cpu = cpu_execution.set_num_threads(n)
    try:
        with threadpoolctl.threadpool_limits(limits=n):
            if torch is not None:
                torch.set_num_threads(n)
            yield
    finally:
        cpu_execution.set_num_threads(old_cpu)
        if torch is not None:
            torch.set_num_threads(old_torch)


# -- the long-range memory training step -------------------------------------------------------
#: the update of issue 9's adding-problem runs: lstm_fb1, H=32, B=32, T=100, Adam, clip 1
MEMORY_STEP = {"task": "adding", "cell": "lstm_fb1", "T": 100, "batch": 32, "hidden": 32,
               "lr": 1e-2, "clip": 1.0}


def _gpulstm_train_runs(backend):
    from gpulstm.lab.train import train
    p = MEMORY_STEP
    try:
        gl.get_backend(backend)
    except gl.BackendUnavailable as e:
        raise NotImplementedError(f"backend {backend!r} unavailable: {e}") from None

    def run(updates):
        train(p["task"], p["cell"], p["T"], steps=updates, batch=p["batch"], hidden=p["hidden"],
              lr=p["lr"], clip=p["clip"], backend=backend, eval_every=0, test_size=p["batch"])
    return run


def _torch_train_runs():
    """PyTorch doing what gpulstm.lab.train does per update: fresh adding-problem sequences from
    the same generator, torch.nn.LSTM + Linear read-out of the last step, MSE, backward,
    clip_grad_norm_, Adam."""
    if torch is None:
        raise NotImplementedError("torch is not installed")
    from gpulstm.lab.tasks import make_task
    p = MEMORY_STEP
    task = make_task(p["task"], p["T"])

    def run(updates):
        torch.manual_seed(0)
        rnn = torch.nn.LSTM(task.input_size, p["hidden"])
        with torch.no_grad():  # forget-gate bias 1 in total, like lstm_fb1
            for b in (rnn.bias_ih_l0, rnn.bias_hh_l0):
                b.zero_()
            rnn.bias_ih_l0[p["hidden"]:2 * p["hidden"]] = 1.0
        lin = torch.nn.Linear(p["hidden"], task.output_size)
        params = list(rnn.parameters()) + list(lin.parameters())
        opt = torch.optim.Adam(params, lr=p["lr"])
        rng = np.random.default_rng(0)
        for _ in range(updates):
            x, target = (torch.from_numpy(a) for a in task.sample(rng, p["batch"]))
            y, _ = rnn(x)
            loss = torch.nn.functional.mse_loss(lin(y[-1]), target.reshape(p["batch"], -1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, p["clip"])
            opt.step()
    return run


def memory_step_seconds(backend, updates=10, repeat=5):
    """Seconds per update of the :data:`MEMORY_STEP` training run on ``backend`` (a gpulstm
    backend or "torch-cpu"): best of ``repeat`` of a run with 1 + ``updates`` updates minus
    the best of a run with 1 (model construction, the final test evaluation and the first
    call's warm-up cancel), divided by ``updates``."""
    run = _torch_train_runs() if backend == "torch-cpu" else _gpulstm_train_runs(backend)
    run(1)  # warm-up: compile, allocate
    best = best_seconds({1: lambda: run(1), 1 + updates: lambda: run(1 + updates)},
                        repeat=repeat, min_sample=0.0)
    return max(best[1 + updates] - best[1], 1e-12) / updates

"""Speed: forward and training (forward + BPTT) time, peak memory, throughput and the speed
ratio against PyTorch, across sequence length, batch, hidden size, cell and backend.

Two sweeps instead of one cartesian product (asv runs the full product of a class's params):

- ``SequenceLength``: T x cell x backend at a fixed B, H (= I);
- ``BatchHidden``: B x H x cell x backend at a fixed T.

Each sweep has ``time_forward`` / ``time_forward_backward`` (asv's sampling; construction,
kernel compilation and a warm-up call happen in ``setup``, the timed call ends with a device
synchronize) and ``track_*`` companions measured once per sweep in ``setup_cache`` (every
backend of a point timed in one process, timeit-style minimum of a few samples):

- ``track_us_per_step`` (us/step): seconds per call / T * 1e6;
- ``track_gflops`` (GFLOP/s): forward 2*G*T*B*H*(I+H) FLOPs (8TBH(I+H) for LSTM, G gates),
  training 3x that;
- ``track_time_ratio_vs_torch`` (t/t_torch): time of the gpulstm backend over its PyTorch
  reference on the same machine (numpy / torch-cpu, cupy / torch-cudnn with TF32 off;
  torch-cudnn-tf32 / torch-cudnn); > 1 is slower than PyTorch.

Parameters ``mode``: "forward" (inference) or "training" (forward + backward: dL/dx and the
weight gradients). Grids: :mod:`bench.common` (GPULSTM_BENCH_PROFILE=quick|full). The fixed
sizes of a sweep are parameters with one value (``B``, ``H`` of the T sweep; ``T`` of the
B x H sweep), so every row of the results names its whole shape.

Two CPU classes compare the CPU executions (``cpu``, ``numpy``) with ``torch-cpu`` at fixed
thread counts (every pool limited with :func:`bench.common.thread_limit`):

- ``CpuVsTorch``: the five LSTM shapes (T, B, I, H) of the CPU speed table, float32, training
  and forward, 1 and 2 threads: ``track_time_ratio_vs_torch`` and ``track_us_per_step``;
- ``MemoryTrainingStep``: one update of the long-range memory runs (adding problem, lstm_fb1,
  H=32, B=32, T=100, Adam, clipping; :data:`bench.common.MEMORY_STEP`), one thread:
  ``track_time_ratio_vs_torch`` and ``track_ms_per_update``.
"""
from .common import (GRID, MEMORY_STEP, PROFILE_NAME, REFERENCE, best_seconds, cached_workload,
                     flops, make_workload, memory_step_seconds, thread_limit)

MODES = ("forward", "training")
BACKENDS = list(GRID["backends"])
RATIO_BACKENDS = [b for b in BACKENDS if b in REFERENCE]
SEQ_B, SEQ_H = GRID["seq_B"], GRID["seq_H"]
BH_T = GRID["bh_T"]
TIMEOUT = 600 if PROFILE_NAME == "quick" else 1800


class _Timed:
    """asv timing attributes shared by the time_/peakmem_ classes. asv re-runs ``setup``
    before each sample; the workload is memoized per process, so only the first builds it."""
    number = 1  # calls per sample (one call of T steps is long enough to time)
    repeat = GRID["repeat"]  # (min samples, max samples, max seconds)
    rounds = GRID["rounds"]
    warmup_time = 0.05  # the real warm-up (compile, allocate) is in setup
    timeout = TIMEOUT


class SequenceLength(_Timed):
    """T sweep at B=SEQ_B, H=I=SEQ_H."""
    params = [list(GRID["T"]), [SEQ_B], [SEQ_H], list(GRID["seq_cells"]), BACKENDS]
    param_names = ["T", "B", "H", "cell", "backend"]

    def setup(self, T, B, H, cell, backend):
        self.w = cached_workload(backend, cell, T, B, H)

    def time_forward(self, T, B, H, cell, backend):
        self.w.forward()

    def time_forward_backward(self, T, B, H, cell, backend):
        self.w.forward_backward()

    def peakmem_forward_backward(self, T, B, H, cell, backend):
        # the process's peak RSS: host memory (a GPU backend's device memory is not in it)
        self.w.forward_backward()


class BatchHidden(_Timed):
    """B x H sweep (I = H) at T=BH_T."""
    params = [[BH_T], list(GRID["bh_B"]), list(GRID["bh_H"]), list(GRID["bh_cells"]), BACKENDS]
    param_names = ["T", "B", "H", "cell", "backend"]

    def setup(self, T, B, H, cell, backend):
        self.w = cached_workload(backend, cell, T, B, H)

    def time_forward(self, T, B, H, cell, backend):
        self.w.forward()

    def time_forward_backward(self, T, B, H, cell, backend):
        self.w.forward_backward()


# -- track_: one measurement per sweep (setup_cache), read by several classes -----------------

def measure(points, backends=BACKENDS, repeat=GRID["track_repeat"]):
    """{(T, B, H, cell, backend, mode): seconds per call, or the reason it was skipped (str)}
    for every point (T, B, H, cell), ``backends`` and their PyTorch references. The backends
    of a point are timed one after the other in this process."""
    backends = list(dict.fromkeys(list(backends) + [REFERENCE[b] for b in backends
                                                    if b in REFERENCE]))
    out = {}
    for T, B, H, cell in points:
        workloads = {}
        for backend in backends:
            try:
                workloads[backend] = make_workload(backend, cell, T, B, H)
            except NotImplementedError as e:
                for mode in MODES:
                    out[(T, B, H, cell, backend, mode)] = str(e)
        for mode in MODES:
            fns = {b: (w.forward if mode == "forward" else w.forward_backward)
                   for b, w in workloads.items()}
            for b, s in best_seconds(fns, repeat=repeat).items():
                out[(T, B, H, cell, b, mode)] = s
        del workloads, fns
    return out


# A setup_cache is computed once per function (asv keys it by module and line), so the
# throughput and ratio classes of one sweep share one measurement.
def _measure_sequence_length(self):
    return measure([(T, SEQ_B, SEQ_H, cell) for T in GRID["T"] for cell in GRID["seq_cells"]])


def _measure_batch_hidden(self):
    return measure([(BH_T, B, H, cell) for B in GRID["bh_B"] for H in GRID["bh_H"]
                    for cell in GRID["bh_cells"]])


_measure_sequence_length.timeout = _measure_batch_hidden.timeout = 4 * TIMEOUT


def _seconds(cache, key):
    s = cache[key]
    if isinstance(s, str):
        raise NotImplementedError(s)
    return s


class _Throughput:
    """track_us_per_step and track_gflops of the point (T, B, H, cell, backend, mode)."""
    timeout = TIMEOUT

    def _us_per_step(self, cache, T, B, H, cell, backend, mode):
        return _seconds(cache, (T, B, H, cell, backend, mode)) / T * 1e6

    def _gflops(self, cache, T, B, H, cell, backend, mode):
        s = _seconds(cache, (T, B, H, cell, backend, mode))
        return flops(cell, T, B, H, H, training=mode == "training") / s / 1e9

    def _ratio(self, cache, T, B, H, cell, backend, mode):
        return (_seconds(cache, (T, B, H, cell, backend, mode))
                / _seconds(cache, (T, B, H, cell, REFERENCE[backend], mode)))


class _ThroughputTracks(_Throughput):
    """track_us_per_step and track_gflops of the point (T, B, H, cell, backend, mode)."""

    def setup(self, cache, T, B, H, cell, backend, mode):
        _seconds(cache, (T, B, H, cell, backend, mode))  # skip what did not run

    def track_us_per_step(self, cache, T, B, H, cell, backend, mode):
        return self._us_per_step(cache, T, B, H, cell, backend, mode)
    track_us_per_step.unit = "us/step"

    def track_gflops(self, cache, T, B, H, cell, backend, mode):
        return self._gflops(cache, T, B, H, cell, backend, mode)
    track_gflops.unit = "GFLOP/s"


class _RatioTracks(_Throughput):
    """track_time_ratio_vs_torch of the point (T, B, H, cell, backend, mode)."""

    def setup(self, cache, T, B, H, cell, backend, mode):
        self._ratio(cache, T, B, H, cell, backend, mode)

    def track_time_ratio_vs_torch(self, cache, T, B, H, cell, backend, mode):
        return self._ratio(cache, T, B, H, cell, backend, mode)
    track_time_ratio_vs_torch.unit = "t/t_torch"


class ThroughputSequenceLength(_ThroughputTracks):
    """us/step and GFLOP/s over T at B=SEQ_B, H=I=SEQ_H."""
    params = [list(GRID["T"]), [SEQ_B], [SEQ_H], list(GRID["seq_cells"]), BACKENDS, list(MODES)]
    param_names = ["T", "B", "H", "cell", "backend", "mode"]
    setup_cache = _measure_sequence_length


class RatioSequenceLength(_RatioTracks):
    """Time over the PyTorch reference's time, over T at B=SEQ_B, H=I=SEQ_H."""
    params = [list(GRID["T"]), [SEQ_B], [SEQ_H], list(GRID["seq_cells"]), RATIO_BACKENDS,
              list(MODES)]
    param_names = ["T", "B", "H", "cell", "backend", "mode"]
    setup_cache = _measure_sequence_length


class ThroughputBatchHidden(_ThroughputTracks):
    """us/step and GFLOP/s over B x H (I = H) at T=BH_T."""
    params = [[BH_T], list(GRID["bh_B"]), list(GRID["bh_H"]), list(GRID["bh_cells"]), BACKENDS,
              list(MODES)]
    param_names = ["T", "B", "H", "cell", "backend", "mode"]
    setup_cache = _measure_batch_hidden


class RatioBatchHidden(_RatioTracks):
    """Time over the PyTorch reference's time, over B x H (I = H) at T=BH_T."""
    params = [[BH_T], list(GRID["bh_B"]), list(GRID["bh_H"]), list(GRID["bh_cells"]),
              RATIO_BACKENDS, list(MODES)]
    param_names = ["T", "B", "H", "cell", "backend", "mode"]
    setup_cache = _measure_batch_hidden


# -- the CPU executions against PyTorch at fixed thread counts ----------------------------------

#: (T, B, I, H) of the CPU speed table (LSTM, float32)
CPU_SHAPES = ((100, 1, 128, 128), (100, 32, 128, 256), (100, 64, 512, 512), (1000, 8, 128, 128),
              (100, 32, 32, 32))
CPU_THREADS = (1, 2)
CPU_BACKENDS = [b for b in BACKENDS if b in ("cpu", "numpy")]


def shape_name(shape):
    """(T, B, I, H) -> "T=100 B=1 I=128 H=128" (the ``shape`` parameter's value)."""
    return " ".join(f"{k}={v}" for k, v in zip("TBIH", shape))


def parse_shape(name):
    """"T=100 B=1 I=128 H=128" -> (100, 1, 128, 128) (the inverse of :func:`shape_name`)."""
    return tuple(int(part.split("=", 1)[1]) for part in name.split())


def measure_cpu(shapes=CPU_SHAPES, threads=CPU_THREADS, backends=CPU_BACKENDS,
                repeat=GRID["track_repeat"]):
    """{(shape name, mode, threads, backend): seconds per call, or the reason it was skipped}
    for the LSTM at each (T, B, I, H) of ``shapes``, every backend and torch-cpu timed one
    after the other in this process with every thread pool limited to ``threads``."""
    backends = list(dict.fromkeys(list(backends) + ["torch-cpu"]))
    out = {}
    for shape in shapes:
        T, B, I, H = shape
        name = shape_name(shape)
        for n in threads:
            try:
                with thread_limit(n):
                    workloads = {}
                    for b in backends:
                        try:
                            workloads[b] = make_workload(b, "lstm", T, B, H, I=I)
                        except NotImplementedError as e:
                            for mode in MODES:
                                out[(name, mode, n, b)] = str(e)
                    for mode in MODES:
                        fns = {b: (w.forward if mode == "forward" else w.forward_backward)
                               for b, w in workloads.items()}
                        for b, sec in best_seconds(fns, repeat=repeat).items():
                            out[(name, mode, n, b)] = sec
                    del workloads, fns
            except NotImplementedError as e:  # no threadpoolctl
                for b in backends:
                    for mode in MODES:
                        out[(name, mode, n, b)] = str(e)
    return out


def _measure_cpu(self):
    return measure_cpu()


_measure_cpu.timeout = 4 * TIMEOUT


class CpuVsTorch:
    """The LSTM (float32) at the five (T, B, I, H) shapes of the CPU speed table, training and
    forward, at 1 and 2 threads: time over torch-cpu's time (``t/t_torch``), us per time
    step and GFLOP/s (the report sets it beside the machine's modelled FMA peak,
    :mod:`gpulstm.cpuinfo`), both libraries limited to the same threads (BLAS, OpenMP,
    torch's pool)."""
    params = [[shape_name(s) for s in CPU_SHAPES], list(MODES), list(CPU_THREADS), CPU_BACKENDS]
    param_names = ["shape", "mode", "threads", "backend"]
    setup_cache = _measure_cpu
    timeout = TIMEOUT

    def setup(self, cache, shape, mode, threads, backend):
        self.track_time_ratio_vs_torch(cache, shape, mode, threads, backend)

    def track_time_ratio_vs_torch(self, cache, shape, mode, threads, backend):
        return (_seconds(cache, (shape, mode, threads, backend))
                / _seconds(cache, (shape, mode, threads, "torch-cpu")))
    track_time_ratio_vs_torch.unit = "t/t_torch"

    def track_us_per_step(self, cache, shape, mode, threads, backend):
        T = parse_shape(shape)[0]
        return _seconds(cache, (shape, mode, threads, backend)) / T * 1e6
    track_us_per_step.unit = "us/step"

    def track_gflops(self, cache, shape, mode, threads, backend):
        T, B, I, H = parse_shape(shape)
        work = flops("lstm", T, B, I, H, training=mode == "training")
        return work / _seconds(cache, (shape, mode, threads, backend)) / 1e9
    track_gflops.unit = "GFLOP/s"


def measure_memory_step(backends=CPU_BACKENDS, repeat=GRID["track_repeat"]):
    """{backend: seconds per update of the memory training step, or why it was skipped}, one
    thread, backends and torch-cpu one after the other in this process."""
    out = {}
    try:
        with thread_limit(1):
            for b in list(backends) + ["torch-cpu"]:
                try:
                    out[b] = memory_step_seconds(b, repeat=repeat)
                except NotImplementedError as e:
                    out[b] = str(e)
    except NotImplementedError as e:
        out = {b: str(e) for b in list(backends) + ["torch-cpu"]}
    return out


def _measure_memory_step(self):
    return measure_memory_step()


class MemoryTrainingStep:
    """One update of the long-range memory runs (adding problem, lstm_fb1, H=32, B=32, T=100,
    Adam, clip 1: gpulstm.lab.train; PyTorch doing the same with torch.nn.LSTM), one thread."""
    params = [[MEMORY_STEP["cell"]], [MEMORY_STEP["T"]], [MEMORY_STEP["batch"]],
              [MEMORY_STEP["hidden"]], CPU_BACKENDS]
    param_names = ["cell", "T", "B", "H", "backend"]
    setup_cache = _measure_memory_step
    timeout = TIMEOUT

    def setup(self, cache, cell, T, B, H, backend):
        self.track_time_ratio_vs_torch(cache, cell, T, B, H, backend)

    def track_time_ratio_vs_torch(self, cache, cell, T, B, H, backend):
        return _seconds(cache, backend) / _seconds(cache, "torch-cpu")
    track_time_ratio_vs_torch.unit = "t/t_torch"

    def track_ms_per_update(self, cache, cell, T, B, H, backend):
        return _seconds(cache, backend) * 1e3
    track_ms_per_update.unit = "ms/update"

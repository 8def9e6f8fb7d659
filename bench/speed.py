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
weight gradients). Grids: :mod:`bench.common` (GPULSTM_BENCH_PROFILE=quick|full).
"""
from .common import GRID, PROFILE_NAME, REFERENCE, best_seconds, cached_workload, flops, make_workload

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
    params = [list(GRID["T"]), list(GRID["seq_cells"]), BACKENDS]
    param_names = ["T", "cell", "backend"]

    def setup(self, T, cell, backend):
        self.w = cached_workload(backend, cell, T, SEQ_B, SEQ_H)

    def time_forward(self, T, cell, backend):
        self.w.forward()

    def time_forward_backward(self, T, cell, backend):
        self.w.forward_backward()

    def peakmem_forward_backward(self, T, cell, backend):
        # the process's peak RSS: host memory (a GPU backend's device memory is not in it)
        self.w.forward_backward()


class BatchHidden(_Timed):
    """B x H sweep (I = H) at T=BH_T."""
    params = [list(GRID["bh_B"]), list(GRID["bh_H"]), list(GRID["bh_cells"]), BACKENDS]
    param_names = ["B", "H", "cell", "backend"]

    def setup(self, B, H, cell, backend):
        self.w = cached_workload(backend, cell, BH_T, B, H)

    def time_forward(self, B, H, cell, backend):
        self.w.forward()

    def time_forward_backward(self, B, H, cell, backend):
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


class ThroughputSequenceLength(_Throughput):
    """us/step and GFLOP/s over T at B=SEQ_B, H=I=SEQ_H."""
    params = [list(GRID["T"]), list(GRID["seq_cells"]), BACKENDS, list(MODES)]
    param_names = ["T", "cell", "backend", "mode"]
    setup_cache = _measure_sequence_length

    def setup(self, cache, T, cell, backend, mode):
        _seconds(cache, (T, SEQ_B, SEQ_H, cell, backend, mode))  # skip what did not run

    def track_us_per_step(self, cache, T, cell, backend, mode):
        return self._us_per_step(cache, T, SEQ_B, SEQ_H, cell, backend, mode)
    track_us_per_step.unit = "us/step"

    def track_gflops(self, cache, T, cell, backend, mode):
        return self._gflops(cache, T, SEQ_B, SEQ_H, cell, backend, mode)
    track_gflops.unit = "GFLOP/s"


class RatioSequenceLength(_Throughput):
    """Time over the PyTorch reference's time, over T at B=SEQ_B, H=I=SEQ_H."""
    params = [list(GRID["T"]), list(GRID["seq_cells"]), RATIO_BACKENDS, list(MODES)]
    param_names = ["T", "cell", "backend", "mode"]
    setup_cache = _measure_sequence_length

    def setup(self, cache, T, cell, backend, mode):
        self._ratio(cache, T, SEQ_B, SEQ_H, cell, backend, mode)

    def track_time_ratio_vs_torch(self, cache, T, cell, backend, mode):
        return self._ratio(cache, T, SEQ_B, SEQ_H, cell, backend, mode)
    track_time_ratio_vs_torch.unit = "t/t_torch"


class ThroughputBatchHidden(_Throughput):
    """us/step and GFLOP/s over B x H (I = H) at T=BH_T."""
    params = [list(GRID["bh_B"]), list(GRID["bh_H"]), list(GRID["bh_cells"]), BACKENDS, list(MODES)]
    param_names = ["B", "H", "cell", "backend", "mode"]
    setup_cache = _measure_batch_hidden

    def setup(self, cache, B, H, cell, backend, mode):
        _seconds(cache, (BH_T, B, H, cell, backend, mode))

    def track_us_per_step(self, cache, B, H, cell, backend, mode):
        return self._us_per_step(cache, BH_T, B, H, cell, backend, mode)
    track_us_per_step.unit = "us/step"

    def track_gflops(self, cache, B, H, cell, backend, mode):
        return self._gflops(cache, BH_T, B, H, cell, backend, mode)
    track_gflops.unit = "GFLOP/s"


class RatioBatchHidden(_Throughput):
    """Time over the PyTorch reference's time, over B x H (I = H) at T=BH_T."""
    params = [list(GRID["bh_B"]), list(GRID["bh_H"]), list(GRID["bh_cells"]), RATIO_BACKENDS,
              list(MODES)]
    param_names = ["B", "H", "cell", "backend", "mode"]
    setup_cache = _measure_batch_hidden

    def setup(self, cache, B, H, cell, backend, mode):
        self._ratio(cache, BH_T, B, H, cell, backend, mode)

    def track_time_ratio_vs_torch(self, cache, B, H, cell, backend, mode):
        return self._ratio(cache, BH_T, B, H, cell, backend, mode)
    track_time_ratio_vs_torch.unit = "t/t_torch"

"""The emulated execution: NumPy arrays and GEMMs, pointwise steps from the CUDA kernels in
``kernels/`` compiled for the CPU by the host C++ compiler (:mod:`gpulstm.emulator`) and
launched with the same grid, block and arguments as on the GPU.

It exists so that every CI run checks the exact kernel source against the NumPy reference.
"""
from __future__ import annotations

import shutil

import numpy as np

from . import BackendUnavailable
from .kernel_loop import KernelLoop
from .kernel_pointwise import KernelPointwise
from .numpy import HostExecution
from .options import tf32_round


class EmulatedExecution(KernelLoop, HostExecution):
    """NumPy arrays and GEMMs; pointwise steps and the device time loop (``algo``) from the
    kernels compiled for the CPU. With ``allow_tf32`` its GEMMs (the ones cuBLAS runs on the
    cupy execution) round float32 inputs to TF32 and accumulate in float32, as cuBLAS's
    ``CUBLAS_COMPUTE_32F_FAST_TF32`` does on tensor cores; the kernels' own products (fused,
    persistent) stay float32, on the GPU too.
    Graphs (``with_graphs``) are the emulator's: the launches recorded during a capture
    (kernel, grid, block, argument bytes: the same pointers), replayed as recorded
    (:class:`gpulstm.emulator.EmulatedGraph`)."""

    #: dtype='bfloat16' runs the kernels compiled for gl_bf16 storage (float compute;
    #: kernels/gpulstm_common.cuh) through gpulstm.lowp.StorageExecution: float32 GEMMs on
    #: widened copies; the stepwise kernels, and the fused time loop (algo "auto", "fused";
    #: "persistent" runs fused: the persistent kernels are float32/float64 only)
    bf16_storage = True
    bf16_kernels = True
    bf16_loops = True

    def matmul(self, a, b, out):
        if self.allow_tf32:
            a, b = tf32_round(a), tf32_round(b)
        np.matmul(a, b, out=out)

    def matmul_acc(self, a, b, out):
        if self.allow_tf32:
            a, b = tf32_round(a), tf32_round(b)
        out += a @ b

    def _begin_capture(self):
        from ..emulator import begin_capture
        begin_capture()

    def _end_capture(self):
        from ..emulator import end_capture
        return end_capture()

    def _launch_graph(self, graph):
        graph.launch()


def create():
    try:
        from ..emulator import EmulatedModule
    except ImportError as e:
        raise BackendUnavailable(f"backend 'emulated' needs gpulstm.emulator, which failed to import: {e}") from e
    if shutil.which("g++") is None and shutil.which("c++") is None:
        raise BackendUnavailable("backend 'emulated' needs a host C++ compiler (g++), none found on PATH")
    from ..kernel_source import kernel_source

    try:
        src = kernel_source()
        module = EmulatedModule(code=src.code, name_expressions=list(src.name_expressions))
        for ne in src.name_expressions:  # fail here, with the log, rather than at the first step
            module.get_function(ne)
    except BackendUnavailable:
        raise
    except Exception as e:  # compiler missing or failing: the message carries the log
        raise BackendUnavailable(f"backend 'emulated': building or loading the kernels for the CPU failed: {e}") from e
    return EmulatedExecution("emulated", KernelPointwise(module.get_function, np))

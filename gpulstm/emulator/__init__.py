"""The ``emulated`` execution: the project's CUDA kernels compiled for and run on the CPU.

``EmulatedModule`` mirrors ``cupy.RawModule``: the same source string, name expressions and
launch arguments (grid, block, args tuple, shared_mem) as the GPU path, so CI compares the
exact kernel source with the NumPy reference. ``begin_capture()`` / ``end_capture()`` record
the launches made in between into an ``EmulatedGraph`` instead of running them (CUDA stream
capture); ``graph.launch()`` replays them with the same argument bytes (pointers) and raises
if an array they point into was freed. ``cuda_on_cpu.h`` (next to this file)
documents what CUDA it emulates and how; ``_build`` documents compilation and the cache.

    >>> import numpy as np
    >>> from gpulstm.emulator import EmulatedModule
    >>> mod = EmulatedModule(r'''
    ... extern "C" __global__ void scale(float* y, const float* x, float a, int n) {
    ...   int i = blockIdx.x * blockDim.x + threadIdx.x;
    ...   if (i < n) y[i] = a * x[i];
    ... }''')
    >>> x = np.arange(5, dtype=np.float32); y = np.empty_like(x)
    >>> mod.get_function("scale")((1,), (32,), (y, x, np.float32(2), np.int32(5)))
    >>> y.tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
"""
from ._errors import EmulatorError
from ._module import EmulatedGraph, EmulatedModule, begin_capture, end_capture, is_capturing

__all__ = ["EmulatedGraph", "EmulatedModule", "EmulatorError", "begin_capture", "end_capture",
           "is_capturing"]

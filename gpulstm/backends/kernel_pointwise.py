"""Pointwise steps that launch the CUDA kernels in ``kernels/``.

:class:`KernelPointwise` has one method per function of :mod:`.numpy_pointwise`, with the same
name and signature; each launches the kernel of that name for the arrays' dtype
(float32 -> ``<float>``, float64 -> ``<double>``). The ``cupy`` and ``emulated`` backends
share it; only ``get_function`` differs (``cupy.RawModule.get_function`` or the emulator's).

Launch convention (see ``kernels/gpulstm_common.cuh``): one thread per element of the [B, W]
state, 1-D blocks of :data:`BLOCK` threads, ``ceil(B * W / BLOCK)`` blocks; arguments are the
NumPy function's arguments in order, scalars as ``numpy.int32``, followed by ``B``, ``W`` and,
where the NumPy function takes it, ``flags``.

Preconditions (the engine guarantees them; not checked per step, for speed): arrays
C-contiguous of one float dtype with the documented shapes, ``lengths`` int32 of shape (B,).
``4 * B * H < 2**31`` (kernels index with int) is checked at each launch (one comparison).
"""
from __future__ import annotations

import numpy as np

from . import philox
from ..kernel_source import name_expression

#: threads per block of every pointwise launch
BLOCK = 256

_i32 = np.int32
_i64 = np.int64
_u32 = np.uint32
_u64 = np.uint64


class KernelPointwise:
    """The pointwise ops of an execution whose kernels come from ``get_function(name_expr)``.

    ``get_function`` returns a launcher ``k(grid, block, args, shared_mem=0)`` like
    ``cupy.RawModule.get_function``; each (kernel, dtype) is looked up once and cached.
    ``xp`` is the array module of the arrays passed in.
    """

    def __init__(self, get_function, xp):
        self._get_function = get_function
        self.xp = xp
        self._kernels = {}

    def kernel(self, name, dtype, cell=None):
        """The cached launcher of kernel ``name`` for ``dtype`` (and the cell struct ``cell``
        of a time-loop kernel, e.g. ``kernel("fused_forward", "float32", "LstmCell")``)."""
        key = (name, np.dtype(dtype).name, cell)
        k = self._kernels.get(key)
        if k is None:
            k = self._kernels[key] = self._get_function(name_expression(*key))
        return k

    def _launch(self, name, dtype, B, W, args):
        n = B * W
        if 4 * n >= 2**31:  # the kernels index [B, 4H] rows with int
            raise ValueError(f"{name}: B * H = {B} * {W} is too large for the kernels' int "
                             f"indexing (4 * B * H must be < 2**31)")
        self.kernel(name, dtype)(((n + BLOCK - 1) // BLOCK,), (BLOCK,), args)

    # -- LSTM ---------------------------------------------------------------------------------
    def lstm_forward(self, gx, gh, c_prev, h_prev, lengths, t, peep, gates, c_next, h_next, y, flags):
        B, H = c_prev.shape
        self._launch("lstm_forward", c_prev.dtype, B, H,
                     (gx, gh, c_prev, h_prev, lengths, _i32(t), peep, gates, c_next, h_next, y,
                      _i32(B), _i32(H), _i32(flags)))

    def lstm_backward(self, gates, c, c_prev, dh_in, dh_next, dy, dc_next, lengths, t, peep, dgates, flags):
        B, H = c.shape
        self._launch("lstm_backward", c.dtype, B, H,
                     (gates, c, c_prev, dh_in, dh_next, dy, dc_next, lengths, _i32(t), peep, dgates,
                      _i32(B), _i32(H), _i32(flags)))

    def lstm_proj_forward(self, h_next, h_prev, lengths, t, y):
        B, P = h_next.shape
        self._launch("lstm_proj_forward", h_next.dtype, B, P,
                     (h_next, h_prev, lengths, _i32(t), y, _i32(B), _i32(P)))

    def lstm_proj_backward(self, dh_next, dy, lengths, t, dhr):
        B, P = dh_next.shape
        self._launch("lstm_proj_backward", dh_next.dtype, B, P,
                     (dh_next, dy, lengths, _i32(t), dhr, _i32(B), _i32(P)))

    # -- GRU ----------------------------------------------------------------------------------
    def gru_forward(self, gx, gh, b_hn, h_prev, lengths, t, gates, h_next, y):
        B, H = h_prev.shape
        self._launch("gru_forward", h_prev.dtype, B, H,
                     (gx, gh, b_hn, h_prev, lengths, _i32(t), gates, h_next, y, _i32(B), _i32(H)))

    def gru_backward(self, gates, h_prev, dh_next, dy, lengths, t, dgx, dgh):
        B, H = h_prev.shape
        self._launch("gru_backward", h_prev.dtype, B, H,
                     (gates, h_prev, dh_next, dy, lengths, _i32(t), dgx, dgh, _i32(B), _i32(H)))

    # -- RNN ----------------------------------------------------------------------------------
    def rnn_forward(self, gx, gh, h_prev, lengths, t, h_next, y, flags):
        B, H = h_prev.shape
        self._launch("rnn_forward", h_prev.dtype, B, H,
                     (gx, gh, h_prev, lengths, _i32(t), h_next, y, _i32(B), _i32(H), _i32(flags)))

    def rnn_backward(self, h, dh_next, dy, lengths, t, dgates, flags):
        B, H = h.shape
        self._launch("rnn_backward", h.dtype, B, H,
                     (h, dh_next, dy, lengths, _i32(t), dgates, _i32(B), _i32(H), _i32(flags)))

    # -- dropout ------------------------------------------------------------------------------
    def dropout_mask(self, mask, p, seed, offset):
        """Fill ``mask`` (C-contiguous, any shape) with the scaled keep mask of dropout
        probability ``p`` from the Philox stream (seed, offset): ``kernels/dropout.cu``, one
        thread per Philox block of 4 elements; the NumPy twin is
        :func:`gpulstm.backends.philox.dropout_mask`."""
        n = int(mask.size)
        if n == 0:
            return
        threads = philox.blocks(n)
        dt = np.dtype(mask.dtype)
        self.kernel("dropout_mask", dt)(
            ((threads + BLOCK - 1) // BLOCK,), (BLOCK,),
            (mask, _i64(n), _u64(int(seed) & (2**64 - 1)), _u64(int(offset) & (2**64 - 1)),
             _u32(philox.threshold(p)), dt.type(philox.scale(p))))

"""gpulstm: LSTM, GRU and RNN forward and BPTT on the GPU (CUDA kernels through CuPy) and on
the CPU (NumPy), PyTorch-shaped.

    >>> import gpulstm as gl
    >>> m = gl.LSTM(8, 16, backend="numpy")
"""
from .backends import BackendUnavailable, available_backends, get_backend
from .tracing import launch_trace
from .modules import CIFG, GRU, LSTM, RNN, GRUCell, IndRNN, LSTMCell, RNNCell

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "RNN", "CIFG", "IndRNN", "LSTMCell", "GRUCell", "RNNCell", "get_backend",
           "available_backends", "BackendUnavailable", "launch_trace"]

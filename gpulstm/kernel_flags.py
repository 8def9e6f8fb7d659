"""The flag bits of the kernel contract: what the ``flags`` argument of every pointwise step
means (NumPy reference, CUDA kernels, the compiled cpu loop). The C++ side is
``kernels/kernel_flags.cuh``; a test checks that both agree."""

# LSTM (a bit field)
LSTM_NO_FORGET = 1  # f == 1: the 1997 cell without a forget gate
LSTM_PEEPHOLE = 2  # diagonal peepholes: i, f see c_{t-1}; o sees c_t
LSTM_PROJ = 4  # proj_size > 0: write m = o * tanh(c) to h_next, no h masking, no y
# RNN and IndRNN
RNN_RELU = 1  # nonlinearity relu instead of tanh

// kernel_flags.cuh: the flag bits of the kernel contract, the same values as
// gpulstm/kernel_flags.py (tests/test_cell_headers.py checks that both agree).
// Plain C++ (the CUDA kernels include it through gpulstm_common.cuh, the cell headers through
// cells/cell_common.cuh; the compiled cpu loop can include it as it is). An enum, so the values stay compile-time
// constants and are not emitted as device globals.
#ifndef GPULSTM_KERNEL_FLAGS_CUH
#define GPULSTM_KERNEL_FLAGS_CUH

enum GpulstmFlags : int {
  LSTM_NO_FORGET = 1,  // LSTM: f == 1, the 1997 cell without a forget gate
  LSTM_PEEPHOLE = 2,   // LSTM: diagonal peepholes, i and f see c_{t-1}, o sees c_t
  LSTM_PROJ = 4,       // LSTM: proj_size > 0, h_next gets m = o * tanh(c), y untouched
  RNN_RELU = 1,        // RNN and IndRNN: relu instead of tanh
};

#endif  // GPULSTM_KERNEL_FLAGS_CUH

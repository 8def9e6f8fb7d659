// rnn_backward.cu: BPTT through one simple-RNN step (pointwise part).
// Reference: gpulstm/backends/numpy_pointwise.py, rnn_backward.
//
//   dh = dh_next + dy;   da = dh (1 - h^2) for tanh, dh [not h <= 0] for relu
// Active rows: dgates = da, dh_next <- 0 (the engine adds dgates @ W_hh);
// inactive rows: dgates = 0, dh_next passes through unchanged.
#include "cell_step.cuh"
#include "cells/rnn.cuh"

template <typename T>
__global__ void rnn_backward(
    const T* h,          // [B,H] hidden state h_t written by the forward step
    T* dh_next,          // [B,H] in/out: dL/dh_t in; 0 for active rows out
    const T* dy,         // [B,H] dL/dy_t
    const int* lengths,  // [B] sequence lengths; row b is active while t < lengths[b]
    const int t,         // time index of this step
    T* dgates,           // [B,H] out: dL/d(pre-activation), 0 for inactive rows
    const int B,         // batch rows
    const int H,         // hidden size
    const int flags) {   // RNN_RELU
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  gl_cell_backward_at<RnnCell, T>(k, nullptr, nullptr, nullptr, h, nullptr, nullptr, dh_next, dy, nullptr, lengths, t, nullptr, dgates, nullptr, B, H, flags);
}

// rnn_forward.cu: one simple-RNN (Elman) step, h = tanh(gx + gh), or relu with RNN_RELU.
// Reference: gpulstm/backends/numpy_pointwise.py, rnn_forward.
// Inactive rows keep h_{t-1} and write y = 0.
#include "cell_step.cuh"
#include "cells/rnn.cuh"

template <typename T>
__global__ void rnn_forward(
    const T* gx,         // [B,H] input projection of x_t, both biases folded in
    const T* gh,         // [B,H] recurrent projection h_{t-1} @ W_hh^T
    const T* h_prev,     // [B,H] hidden state h_{t-1}
    const int* lengths,  // [B] sequence lengths; row b is active while t < lengths[b]
    const int t,         // time index of this step
    T* h_next,           // [B,H] out: h_t (h_{t-1} for inactive rows)
    T* y,                // [B,H] out: y_t (0 for inactive rows)
    const int B,         // batch rows
    const int H,         // hidden size
    const int flags) {   // RNN_RELU
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  gl_cell_forward_at<RnnCell, T>(k, gx, gh, nullptr, nullptr, h_prev, lengths, t, nullptr, nullptr, h_next, y, B, H, flags);
}

// gru_forward.cu: one fused pointwise GRU step (forward), PyTorch's formulation: gate order
// r, z, n, the reset gate multiplies the hidden projection including its bias b_hn.
// Reference: gpulstm/backends/numpy_pointwise.py, gru_forward.
//
//   r = sigma(gx_r + gh_r)   z = sigma(gx_z + gh_z)   hn = gh_n + b_hn
//   n = tanh(gx_n + r hn)    h = n + z (h_{t-1} - n)
// Saves (r, z, n, hn) for every row; inactive rows keep h_{t-1} and write y = 0.
#include "cell_step.cuh"
#include "cells/gru.cuh"

template <typename T>
__global__ void gru_forward(
    const T* gx,         // [B,3H] x_t @ W_ih^T + b_ih + (b_hr, b_hz, 0)
    const T* gh,         // [B,3H] h_{t-1} @ W_hh^T (no bias)
    const T* b_hn,       // [H] hidden bias of the n gate
    const T* h_prev,     // [B,H] hidden state h_{t-1}
    const int* lengths,  // [B] sequence lengths; row b is active while t < lengths[b]
    const int t,         // time index of this step
    T* gates,            // [B,4H] out: r, z, n, hn, saved for backward
    T* h_next,           // [B,H] out: h_t (h_{t-1} for inactive rows)
    T* y,                // [B,H] out: y_t (0 for inactive rows)
    const int B,         // batch rows
    const int H) {       // hidden size
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  gl_cell_forward_at<GruCell, T>(k, gx, gh, b_hn, nullptr, h_prev, lengths, t, gates, nullptr, h_next, y, B, H, 0);
}

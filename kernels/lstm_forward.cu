// lstm_forward.cu: one fused pointwise LSTM step (forward), PyTorch's gate order i, f, g, o.
// Reference: gpulstm/backends/numpy_pointwise.py, lstm_forward.
//
//   i = sigma(a_i + p_i c_{t-1})   f = sigma(a_f + p_f c_{t-1})   g = tanh(a_g)
//   c = f c_{t-1} + i g            o = sigma(a_o + p_o c)         h = o tanh(c)
// with a = gx + gh; peepholes p only with LSTM_PEEPHOLE; f = 1 with LSTM_NO_FORGET.
// Inactive rows (t >= lengths[b]) keep their state and write y = 0; the gates are written for
// every row. With LSTM_PROJ, h_next receives m = o tanh(c) for every row (the projection and
// its masking follow in lstm_proj_forward) and neither h_prev nor y is touched.
#include "cell_step.cuh"
#include "cells/lstm.cuh"

template <typename T>
__global__ void lstm_forward(
    const T* gx,         // [B,4H] input projection of x_t, both biases folded in
    const T* gh,         // [B,4H] recurrent projection h_{t-1} @ W_hh^T
    const T* c_prev,     // [B,H] cell state c_{t-1}
    const T* h_prev,     // [B,H] hidden state h_{t-1} (not read with LSTM_PROJ)
    const int* lengths,  // [B] sequence lengths; row b is active while t < lengths[b]
    const int t,         // time index of this step (not the loop counter)
    const T* peep,       // [3,H] peephole weights p_i, p_f, p_o (read only with LSTM_PEEPHOLE)
    T* gates,            // [B,4H] out: activated i, f, g, o, saved for backward
    T* c_next,           // [B,H] out: c_t (c_{t-1} for inactive rows)
    T* h_next,           // [B,H] out: h_t (h_{t-1} for inactive rows); m = o tanh(c) with LSTM_PROJ
    T* y,                // [B,H] out: y_t (0 for inactive rows); not touched with LSTM_PROJ
    const int B,         // batch rows
    const int H,         // hidden size
    const int flags) {   // LSTM_NO_FORGET | LSTM_PEEPHOLE | LSTM_PROJ
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  gl_cell_forward_at<LstmCell, T>(k, gx, gh, peep, c_prev, h_prev, lengths, t, gates, c_next, h_next, y, B, H, flags);
}

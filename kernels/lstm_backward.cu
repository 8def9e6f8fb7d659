// lstm_backward.cu: BPTT through one LSTM step (pointwise part), gate order i, f, g, o.
// Reference: gpulstm/backends/numpy_pointwise.py, lstm_backward.
//
//   dh   = dh_next + dy                 (dh_in, i.e. dL/dm, with LSTM_PROJ)
//   da_o = dh tanh(c) o (1 - o)
//   dc   = dc_next + dh o (1 - tanh(c)^2)  [+ da_o p_o with LSTM_PEEPHOLE]
//   da_i = dc g i (1 - i)    da_f = dc c_{t-1} f (1 - f) (0 with LSTM_NO_FORGET)
//   da_g = dc i (1 - g^2)    dc_{t-1} = dc f  [+ da_i p_i + da_f p_f with LSTM_PEEPHOLE]
// Active rows: dgates = (da_i, da_f, da_g, da_o), dc_next <- dc_{t-1}, dh_next <- 0 (the engine
// then adds dgates @ W_hh). Inactive rows: dgates = 0, dc_next and dh_next pass through.
// With LSTM_PROJ, dh_next and dy (both [B,P]) are not touched.
#include "cell_step.cuh"
#include "cells/lstm.cuh"

template <typename T>
__global__ void lstm_backward(
    const T* gates,      // [B,4H] activated i, f, g, o saved by lstm_forward
    const T* c,          // [B,H] cell state c_t written by the forward step
    const T* c_prev,     // [B,H] cell state c_{t-1}
    const T* dh_in,      // [B,H] dL/dm from the projection (read only with LSTM_PROJ)
    T* dh_next,          // [B,H] in/out: dL/dh_t in; 0 for active rows out (not touched with LSTM_PROJ)
    const T* dy,         // [B,H] dL/dy_t (not read with LSTM_PROJ)
    T* dc_next,          // [B,H] in/out: dL/dc_t in, dL/dc_{t-1} out
    const int* lengths,  // [B] sequence lengths; row b is active while t < lengths[b]
    const int t,         // time index of this step
    const T* peep,       // [3,H] peephole weights p_i, p_f, p_o (read only with LSTM_PEEPHOLE)
    T* dgates,           // [B,4H] out: dL/d(a_i, a_f, a_g, a_o), 0 for inactive rows
    const int B,         // batch rows
    const int H,         // hidden size
    const int flags) {   // LSTM_NO_FORGET | LSTM_PEEPHOLE | LSTM_PROJ
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  gl_cell_backward_at<LstmCell, T>(k, gates, c, c_prev, nullptr, nullptr, dh_in, dh_next, dy, dc_next, lengths, t, peep, dgates, nullptr, B, H, flags);
}

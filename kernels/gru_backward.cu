// gru_backward.cu: BPTT through one GRU step (pointwise part), gate order r, z, n.
// Reference: gpulstm/backends/numpy_pointwise.py, gru_backward.
//
//   dh = dh_next + dy
//   da_n = dh (1 - z) (1 - n^2)   da_r = da_n hn r (1 - r)   da_z = dh (h_{t-1} - n) z (1 - z)
//   dgx = (da_r, da_z, da_n)      dgh = (da_r, da_z, da_n r)  dh_next <- dh z (direct part)
// Inactive rows: dgx = dgh = 0 and dh_next passes through unchanged.
#include "cell_step.cuh"
#include "cells/gru.cuh"

template <typename T>
__global__ void gru_backward(
    const T* gates,      // [B,4H] r, z, n, hn saved by gru_forward
    const T* h_prev,     // [B,H] hidden state h_{t-1}
    T* dh_next,          // [B,H] in/out: dL/dh_t in; direct part dh * z of dL/dh_{t-1} out
    const T* dy,         // [B,H] dL/dy_t
    const int* lengths,  // [B] sequence lengths; row b is active while t < lengths[b]
    const int t,         // time index of this step
    T* dgx,              // [B,3H] out: gradient of the input projection (a_r, a_z, x_n)
    T* dgh,              // [B,3H] out: gradient of the hidden projection (incl. b_hn)
    const int B,         // batch rows
    const int H) {       // hidden size
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  gl_cell_backward_at<GruCell, T>(k, gates, nullptr, nullptr, nullptr, h_prev, nullptr, dh_next, dy, nullptr, lengths, t, nullptr, dgx, dgh, B, H, 0);
}

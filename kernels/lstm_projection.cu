// lstm_projection.cu: masking around the LSTM projection GEMM (proj_size = P > 0), forward
// and backward. Reference: gpulstm/backends/numpy_pointwise.py, lstm_proj_forward and
// lstm_proj_backward. Both work on [B,P] arrays; their `H` argument is the width P.
//
// forward  (after h_raw = m @ W_hr^T was written into h_next):
//   active: y = h_raw, h_next = h_raw;     inactive: y = 0, h_next = h_{t-1}
// backward (before dm = dhr @ W_hr):
//   active: dhr = dh_next + dy, dh_next = 0;   inactive: dhr = 0, dh_next unchanged
#include "gpulstm_common.cuh"

template <typename T>
__global__ void lstm_proj_forward(
    T* h_next,           // [B,P] in/out: projected h_raw in; h_t out (h_{t-1} for inactive rows)
    const T* h_prev,     // [B,P] projected state h_{t-1}
    const int* lengths,  // [B] sequence lengths; row b is active while t < lengths[b]
    const int t,         // time index of this step
    T* y,                // [B,P] out: y_t (0 for inactive rows)
    const int B,         // batch rows
    const int H) {       // width P of the projected state
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  const int b = k / H;
  if (active(lengths, b, t)) {
    y[k] = h_next[k];
  } else {
    y[k] = T(0);
    h_next[k] = h_prev[k];
  }
}

template <typename T>
__global__ void lstm_proj_backward(
    T* dh_next,          // [B,P] in/out: dL/dh_t in; 0 for active rows out
    const T* dy,         // [B,P] dL/dy_t
    const int* lengths,  // [B] sequence lengths; row b is active while t < lengths[b]
    const int t,         // time index of this step
    T* dhr,              // [B,P] out: dL/dh_raw (0 for inactive rows)
    const int B,         // batch rows
    const int H) {       // width P of the projected state
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= B * H) return;
  const int b = k / H;
  if (active(lengths, b, t)) {
    dhr[k] = T(dh_next[k]) + T(dy[k]);  // float for bf16 storage (gl_bf16 converts)
    dh_next[k] = T(0);
  } else {
    dhr[k] = T(0);
  }
}

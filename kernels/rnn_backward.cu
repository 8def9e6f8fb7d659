// rnn_backward.cu: BPTT through one simple-RNN step (pointwise part).
// Reference: gpulstm/backends/numpy_pointwise.py, rnn_backward.
//
//   dh = dh_next + dy;   da = dh (1 - h^2) for tanh, dh [not h <= 0] for relu
// Active rows: dgates = da, dh_next <- 0 (the engine adds dgates @ W_hh);
// inactive rows: dgates = 0, dh_next passes through unchanged.
#include "gpulstm_common.cuh"

// The step for element k = b * H + j of the [B, H] state (0 <= k < B * H), arguments as
// the kernel below; the fused time-loop kernels (kernels/fused_step.cu) call it too.
template <typename T>
__device__ __forceinline__ void rnn_backward_at(
    const int k, const T* h, T* dh_next, const T* dy, const int* lengths, const int t, T*
    dgates, const int B, const int H, const int flags) {
  const int b = k / H;
  if (!active(lengths, b, t)) {
    dgates[k] = T(0);
    return;  // dh_next passes through unchanged
  }
  const T dh = dh_next[k] + dy[k];
  const T hk = h[k];
  // relu: torch's threshold_backward, 0 where h <= 0 and dh elsewhere (h NaN passes dh)
  dgates[k] = (flags & RNN_RELU) ? (hk <= T(0) ? T(0) : dh) : dh * (T(1) - hk * hk);
  dh_next[k] = T(0);
}

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
  rnn_backward_at(k, h, dh_next, dy, lengths, t, dgates, B, H, flags);
}

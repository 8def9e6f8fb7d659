// rnn_forward.cu: one simple-RNN (Elman) step, h = tanh(gx + gh), or relu with RNN_RELU.
// Reference: gpulstm/backends/numpy_pointwise.py, rnn_forward.
// Inactive rows keep h_{t-1} and write y = 0.
#include "gpulstm_common.cuh"

// The step for element k = b * H + j of the [B, H] state (0 <= k < B * H), arguments as
// the kernel below; the fused time-loop kernels (kernels/fused_step.cu) call it too.
template <typename T>
__device__ __forceinline__ void rnn_forward_at(
    const int k, const T* gx, const T* gh, const T* h_prev, const int* lengths, const int t, T*
    h_next, T* y, const int B, const int H, const int flags) {
  const int b = k / H;
  const T a = gx[k] + gh[k];
  // relu as max(a, 0) with NaN propagated, like np.maximum
  const T h = (flags & RNN_RELU) ? (a < T(0) ? T(0) : a) : gl_tanh(a);
  const bool act = active(lengths, b, t);
  h_next[k] = act ? h : h_prev[k];
  y[k] = act ? h : T(0);
}

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
  rnn_forward_at(k, gx, gh, h_prev, lengths, t, h_next, y, B, H, flags);
}

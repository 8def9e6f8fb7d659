// gru_forward.cu: one fused pointwise GRU step (forward), PyTorch's formulation: gate order
// r, z, n, the reset gate multiplies the hidden projection including its bias b_hn.
// Reference: gpulstm/backends/numpy_pointwise.py, gru_forward.
//
//   r = sigma(gx_r + gh_r)   z = sigma(gx_z + gh_z)   hn = gh_n + b_hn
//   n = tanh(gx_n + r hn)    h = n + z (h_{t-1} - n)
// Saves (r, z, n, hn) for every row; inactive rows keep h_{t-1} and write y = 0.
#include "gpulstm_common.cuh"

// The step for element k = b * H + j of the [B, H] state (0 <= k < B * H), arguments as
// the kernel below; the fused time-loop kernels (kernels/fused_step.cu) call it too.
template <typename T>
__device__ __forceinline__ void gru_forward_at(
    const int k, const T* gx, const T* gh, const T* b_hn, const T* h_prev, const int* lengths,
    const int t, T* gates, T* h_next, T* y, const int B, const int H) {
  const int b = k / H;
  const int j = k - b * H;
  const int g3 = b * 3 * H + j;  // column j of gate block 0 in a [B,3H] row
  const int g4 = b * 4 * H + j;  // column j of gate block 0 in a [B,4H] row

  const T r = gl_sigmoid(gx[g3] + gh[g3]);
  const T z = gl_sigmoid(gx[g3 + H] + gh[g3 + H]);
  const T hn = gh[g3 + 2 * H] + b_hn[j];
  const T n = gl_tanh(gx[g3 + 2 * H] + r * hn);
  const T hp = h_prev[k];
  const T h = n + z * (hp - n);

  gates[g4] = r;
  gates[g4 + H] = z;
  gates[g4 + 2 * H] = n;
  gates[g4 + 3 * H] = hn;
  const bool act = active(lengths, b, t);
  h_next[k] = act ? h : hp;
  y[k] = act ? h : T(0);
}

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
  gru_forward_at(k, gx, gh, b_hn, h_prev, lengths, t, gates, h_next, y, B, H);
}

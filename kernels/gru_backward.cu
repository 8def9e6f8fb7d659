// gru_backward.cu: BPTT through one GRU step (pointwise part), gate order r, z, n.
// Reference: gpulstm/backends/numpy_pointwise.py, gru_backward.
//
//   dh = dh_next + dy
//   da_n = dh (1 - z) (1 - n^2)   da_r = da_n hn r (1 - r)   da_z = dh (h_{t-1} - n) z (1 - z)
//   dgx = (da_r, da_z, da_n)      dgh = (da_r, da_z, da_n r)  dh_next <- dh z (direct part)
// Inactive rows: dgx = dgh = 0 and dh_next passes through unchanged.
#include "gpulstm_common.cuh"

// The step for element k = b * H + j of the [B, H] state (0 <= k < B * H), arguments as
// the kernel below; the fused time-loop kernels (kernels/fused_step.cu) call it too.
template <typename T>
__device__ __forceinline__ void gru_backward_at(
    const int k, const T* gates, const T* h_prev, T* dh_next, const T* dy, const int* lengths,
    const int t, T* dgx, T* dgh, const int B, const int H) {
  const int b = k / H;
  const int j = k - b * H;
  const int g3 = b * 3 * H + j;
  const int g4 = b * 4 * H + j;

  if (!active(lengths, b, t)) {
    dgx[g3] = T(0);
    dgx[g3 + H] = T(0);
    dgx[g3 + 2 * H] = T(0);
    dgh[g3] = T(0);
    dgh[g3 + H] = T(0);
    dgh[g3 + 2 * H] = T(0);
    return;  // dh_next passes through unchanged
  }
  const T r = gates[g4];
  const T z = gates[g4 + H];
  const T n = gates[g4 + 2 * H];
  const T hn = gates[g4 + 3 * H];
  const T dh = dh_next[k] + dy[k];
  const T dan = dh * (T(1) - z) * (T(1) - n * n);
  const T dar = dan * hn * r * (T(1) - r);
  const T daz = dh * (h_prev[k] - n) * z * (T(1) - z);

  dgx[g3] = dar;
  dgx[g3 + H] = daz;
  dgx[g3 + 2 * H] = dan;
  dgh[g3] = dar;
  dgh[g3 + H] = daz;
  dgh[g3 + 2 * H] = dan * r;
  dh_next[k] = dh * z;
}

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
  gru_backward_at(k, gates, h_prev, dh_next, dy, lengths, t, dgx, dgh, B, H);
}

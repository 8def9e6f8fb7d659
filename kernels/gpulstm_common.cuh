// gpulstm_common.cuh: device helpers shared by every pointwise kernel in kernels/.
//
// The math of each kernel is specified by the NumPy function of the same name in
// gpulstm/backends/numpy_pointwise.py; the helpers here use the same formulas so that results
// agree to rounding. No system or CUDA headers are included: the sources compile with NVRTC
// without the CUDA toolkit's headers and with the host compiler through the CPU emulation
// (gpulstm/emulator). The loader (gpulstm/kernel_source.py) inlines this file into one source.
//
// Kernel conventions (all kernels in this folder):
//   * one thread per element (b, j) of the [B, W] state (W = H, or P for the projection
//     kernels), 1-D grid of 1-D blocks, k = blockIdx.x * blockDim.x + threadIdx.x,
//     b = k / W, j = k % W; threads with k >= B * W return at once;
//   * arguments: the NumPy function's arguments in its order (arrays as pointers to
//     C-contiguous rows, `t` as int), then `int B, int H`, then `int flags` where the NumPy
//     function takes flags; indices are int, so callers keep 4 * B * H < 2^31;
//   * every output element is written exactly once, inactive rows too; in/out arrays are read
//     and written by the same thread only, so no barriers or atomics are needed;
//   * pointers carry no __restrict__: the engine passes aliased arrays in some modes
//     (y == h_next for lstm_forward with LSTM_PROJ, dh_in == dh_next for lstm_backward without);
//   * plain IEEE arithmetic, no fast-math intrinsics.
#ifndef GPULSTM_COMMON_CUH
#define GPULSTM_COMMON_CUH

#include "kernel_flags.cuh"

// The cell headers (kernels/cells/) compiled for the device only: their math policy
// (GlCudaMath, cell_step.cuh) is device code.
#ifndef GPULSTM_HD
#define GPULSTM_HD __device__ __forceinline__
#endif  // the flag bits, one definition for every kernel and cell

// exp and tanh for each dtype, spelled out so that no overload resolution is left to the
// math headers of either compiler (float -> expf/tanhf, double -> exp/tanh).
__device__ __forceinline__ float gl_exp(float x) { return expf(x); }
__device__ __forceinline__ double gl_exp(double x) { return exp(x); }
__device__ __forceinline__ float gl_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double gl_tanh(double x) { return tanh(x); }

// Logistic function 1 / (1 + exp(-x)), as numpy_pointwise.sigmoid and PyTorch. Accurate in
// both tails: for large negative x, exp(-x) overflows to inf and the result is 0.
template <typename T>
__device__ __forceinline__ T gl_sigmoid(T x) {
  return T(1) / (T(1) + gl_exp(-x));
}

// bfloat16 storage (dtype "bfloat16": gpulstm/lowp.py): 1 sign, 8 exponent, 7 mantissa bits,
// the upper half of a float32. The kernels' own type, so the sources still need no CUDA
// header (cuda_bf16.h's __nv_bfloat16 has the same 2-byte layout: cuBLAS and torch read the
// same buffers). It converts to float implicitly and has no arithmetic of its own, so an
// expression of gl_bf16 values runs in float (the built-in operators) and a store to a gl_bf16
// rounds once: to nearest, ties to even (ml_dtypes' rounding); NaN stays a quiet NaN,
// overflow gives inf.
__device__ __forceinline__ unsigned short gl_bf16_bits(const float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (unsigned short)(u >> 16);
}

struct gl_bf16 {
  unsigned short bits;
  gl_bf16() = default;
  __device__ __forceinline__ gl_bf16(const float f) : bits(gl_bf16_bits(f)) {}
  __device__ __forceinline__ operator float() const {
    return __uint_as_float((unsigned)bits << 16);
  }
};

// The type a kernel computes in for storage type S: float for gl_bf16, else S itself.
template <typename S>
struct gl_compute {
  using type = S;
};
template <>
struct gl_compute<gl_bf16> {
  using type = float;
};

// Row b is active at time t while its sequence runs: t < lengths[b].
__device__ __forceinline__ bool active(const int* lengths, int b, int t) {
  return t < lengths[b];
}

#endif  // GPULSTM_COMMON_CUH

// fused_step.cu: one launch per time step, the recurrent product and the pointwise step fused.
// Used by the "fused" algorithm (gpulstm/backends/kernel_loop.py); the math of every step is
// the pointwise kernels' (gl_cell_forward_at / gl_cell_backward_at of cell_step.cuh around the
// cell header's math), so the fused and the stepwise loop differ only in the summation order
// of the recurrent product. Every kernel is a template on the cell (a struct of
// kernels/cells/): gpulstm/kernel_source.py instantiates it for every cell header there
// (fused_forward<LstmCell, float>, ...).
//
// Tiling (every kernel here): a block of U x R x Z threads (U = blockDim.x <= FUSED_TILE units,
// R = blockDim.y <= FUSED_ROWS rows, Z = blockDim.z reduction slices, U R Z <= FUSED_THREADS)
// owns hidden units j in [U * blockIdx.x, + U) -- all gates of those units -- and batch rows
// b in [R * blockIdx.y, + R); threads (x, y, z) share the element (b, j), each summing every
// Z-th column of the product, and thread (x, y, 0) adds the Z partial sums (in order z = 0, 1,
// ...) and runs the pointwise step. The fused kernels use U = 32, Z = 1; the persistent kernels
// use smaller U (more blocks: more SMs) and Z > 1 (enough threads per block).
// The left operand of the recurrent product (h_{t-1} forward, dG_{t+1} backward; [B, K] rows)
// is staged through shared memory in chunks of FUSED_TILE columns; the right operand is read
// from global memory (through L1/L2) or shared memory along its rows, so neighbouring lanes of
// a warp read neighbouring elements (coalesced):
//
//   forward  (K = H):   gh[b, g H + j] = sum_k h_{t-1}[b, k] W_hh^T[k, g H + j]   g < G
//   backward (K = G H): dh[b, j] += sum_m dG_{t+1}[b, m] W_hh[m, j]
//
// then the pointwise step of (b, j). The forward writes the product into the engine's [B, G H]
// scratch `gh` and the pointwise step reads it back: the same thread, no barrier needed.
// Inputs and outputs of one launch are distinct arrays (slots t and t +- 1 of the engine's
// buffers), so blocks never depend on each other within a launch; the launch boundary is the
// grid-wide barrier between steps. Indices are int: callers keep 4 * B * H < 2^31.
// LSTM with LSTM_PROJ is not fused (the projection GEMM sits between steps): callers decline.
// The same step functions make the persistent kernels (persistent.cu).
#include "cell_step.cuh"

#define FUSED_TILE 32      // maximum units per block (blockDim.x); columns per shared chunk
#define FUSED_ROWS 8       // maximum batch rows per block (blockDim.y)
#define FUSED_THREADS 256  // maximum threads per block (blockDim.x * blockDim.y * blockDim.z)

// Static shared memory of every kernel here: the left operand's chunk (rows padded by one
// element, so that the rows a warp reads at one column fall into different banks) and the
// partial sums.
template <typename T>
struct FusedShared {
  T tile[FUSED_ROWS][FUSED_TILE + 1];
  T red[4][FUSED_THREADS];
};

// Load of a value another block wrote during this launch (persistent kernels): through L2,
// bypassing the SM's non-coherent L1.
template <typename T>
__device__ __forceinline__ T gl_load_cg(const T* p) {
#ifdef GPULSTM_EMULATED
  return *p;
#else
  return __ldcg(p);
#endif
}
// bf16 storage: __ldcg has no overload for a struct; load its 16 bits
__device__ __forceinline__ gl_bf16 gl_load_cg(const gl_bf16* p) {
#ifdef GPULSTM_EMULATED
  return *p;
#else
  gl_bf16 v;
  v.bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
  return v;
#endif
}

// acc[g] = sum_{k < K} left[b * ldl + k] * right[k * ldr + col + g * gstride] for g < NG,
// complete in the thread (x, y, 0) of element (b, j), b = R blockIdx.y + y. Every thread of
// the block must call it (it holds barriers); rows b >= B and columns with !col_ok contribute
// nothing and get acc = 0. `right` may point to global or shared memory; `col` depends on
// threadIdx.x only.
//
// The reduction runs register-blocked over the block's rows: the U R Z threads form S = R Z
// slices of U units; slice s sums the columns c = s, s + S, ... of each chunk for ALL R rows,
// loading each weight once per block and step. The partial sums then meet in shared memory,
// one row at a time, and the owner of (b, j) adds them in slice order.
// St: the operands' storage type; T = gl_compute<St>::type: shared memory, the partial sums
// and acc (float for gl_bf16: the product of bf16 operands accumulates in float).
template <typename St, int NG, typename T = typename gl_compute<St>::type>
__device__ __forceinline__ void fused_row_product(
    FusedShared<T>& sh, const St* left, const int ldl, const int K, const St* right,
    const int ldr, const int col, const int gstride, const int B, const bool col_ok,
    T* acc) {
  const int U = blockDim.x, R = blockDim.y;
  const int x = threadIdx.x;
  const int lin = x + U * (threadIdx.y + R * threadIdx.z);
  const int nthreads = U * R * blockDim.z, S = nthreads / U, s = lin / U;
  const int b0 = blockIdx.y * R;
  const int rows = B - b0 < R ? B - b0 : R;
  T part[FUSED_ROWS][NG];  // registers: every loop over r and g below is unrolled
#pragma unroll
  for (int r = 0; r < FUSED_ROWS; ++r)
#pragma unroll
    for (int g = 0; g < NG; ++g) part[r][g] = T(0);
  for (int k0 = 0; k0 < K; k0 += FUSED_TILE) {
    for (int i = lin; i < R * FUSED_TILE; i += nthreads) {
      const int r = i / FUSED_TILE, c = i - r * FUSED_TILE;
      sh.tile[r][c] = (r < rows && k0 + c < K) ? T(gl_load_cg(left + (b0 + r) * ldl + k0 + c))
                                               : T(0);
    }
    __syncthreads();
    if (col_ok) {
      const int n = K - k0 < FUSED_TILE ? K - k0 : FUSED_TILE;
      for (int c = s; c < n; c += S) {
        const St* rp = right + (k0 + c) * ldr + col;
        T w[NG];
#pragma unroll
        for (int g = 0; g < NG; ++g) w[g] = T(rp[g * gstride]);
#pragma unroll
        for (int r = 0; r < FUSED_ROWS; ++r) {
          if (r < rows) {
            const T l = sh.tile[r][c];
#pragma unroll
            for (int g = 0; g < NG; ++g) part[r][g] = part[r][g] + l * w[g];
          }
        }
      }
    }
    __syncthreads();
  }
  for (int g = 0; g < NG; ++g) acc[g] = T(0);
#pragma unroll
  for (int r = 0; r < FUSED_ROWS; ++r) {  // rows is the same for the whole block
    if (r < rows) {
#pragma unroll
      for (int g = 0; g < NG; ++g) sh.red[g][lin] = part[r][g];
      __syncthreads();
      if (threadIdx.y == r && threadIdx.z == 0) {
        for (int g = 0; g < NG; ++g) {
          T sum = sh.red[g][x];
          for (int q = 1; q < S; ++q) sum = sum + sh.red[g][x + U * q];
          acc[g] = sum;
        }
      }
      __syncthreads();
    }
  }
}

// ---- one step of one block -----------------------------------------------------------------
// The step functions below are one block's share of one time step of any cell (a struct of
// kernels/cells/, the template argument Cell); the fused kernels run one per launch, the
// persistent kernels (persistent.cu) all of them in one launch. The right operand of the
// product is (right, ldr, col, gstride) as in fused_row_product: W_hh^T in global memory
// (right = w_hh_T, ldr = G H, col = j, gstride = H forward; right = w_hh, ldr = H, col = j
// backward) or the block's resident copy in shared memory. A cell without a dense recurrence
// (Cell::DENSE false) has no product: its step is the pointwise one alone.

template <class Cell, typename S, typename T = typename gl_compute<S>::type>
__device__ __forceinline__ void gl_step_forward(
    FusedShared<T>& sh, const S* right, const int ldr, const int col, const int gstride,
    const S* gx, const S* konst, const S* c_prev, const S* h_prev, const int* lengths,
    const int t, S* gh, S* saved, S* c_next, S* h_next, S* y, const int B, const int H,
    const int flags) {
  constexpr int G = Cell::G;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int b = blockIdx.y * blockDim.y + threadIdx.y;
  T acc[G];
  if (Cell::DENSE)
    fused_row_product<S, G>(sh, h_prev, H, H, right, ldr, col, gstride, B, j < H, acc);
  if (!(b < B && j < H) || threadIdx.z) return;
  if (Cell::DENSE)
    for (int g = 0; g < G; ++g) gh[b * G * H + g * H + j] = acc[g];
  gl_cell_forward_at<Cell, S>(b * H + j, gx, gh, konst, c_prev, h_prev, lengths, t, saved,
                              c_next, h_next, y, B, H, flags);
}

// Backward: dg_prev [B, G H] is the hidden-projection gradient of the step processed before
// this one (dGh[t+1] forward direction, dGh[t-1] reverse; dGh is dGx unless Cell::SPLIT_DGH),
// has_prev 0 for the first step processed (nothing to add). dh_next[b, j] += (dg_prev W_hh)[b,
// j] first -- exactly the stepwise loop's matmul_acc -- then the pointwise backward of (b, j).
// After the last step the caller adds dG W_hh once more (dL/dh_0).

template <class Cell, typename S, typename T = typename gl_compute<S>::type>
__device__ __forceinline__ void gl_step_backward(
    FusedShared<T>& sh, const S* right, const int ldr, const int col, const S* dg_prev,
    const int has_prev, const S* saved, const S* c, const S* c_prev, const S* h,
    const S* h_prev, S* dh_next, const S* dy, S* dc_next, const int* lengths, const int t,
    const S* konst, S* dgx, S* dgh, const int B, const int H, const int flags) {
  constexpr int GH = Cell::G;
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int b = blockIdx.y * blockDim.y + threadIdx.y;
  T acc[1];
  if (Cell::DENSE)
    fused_row_product<S, 1>(sh, dg_prev, GH * H, has_prev ? GH * H : 0, right, ldr, col, 0, B,
                            j < H, acc);
  if (!(b < B && j < H) || threadIdx.z) return;
  const int k = b * H + j;
  if (Cell::DENSE && has_prev) dh_next[k] = T(dh_next[k]) + acc[0];
  gl_cell_backward_at<Cell, S>(k, saved, c, c_prev, h, h_prev, dh_next, dh_next, dy, dc_next,
                               lengths, t, konst, dgx, dgh, B, H, flags);
}

// ---- the fused kernels: one step per launch -------------------------------------------------
// One signature for every cell (gpulstm.cells.Cell.fused_forward_args / fused_backward_args
// name the buffers): konst the cell's [NCONST, H] constants, saved its [B, SAVED H] slot;
// pointers the cell does not use (cell_step.cuh) may be any buffer of the right type.

template <class Cell, typename T>
__global__ void fused_forward(
    const T* gx,      // [B,GH] input projection of x_t (the biases the cell folds)
    const T* w_hh_T,  // [H,GH] W_hh transposed, C-contiguous
    const T* konst,   // [NCONST,H] the cell's constants (LSTM peepholes, GRU b_hn)
    const T* c_prev,  // [B,H] c_{t-1} (HAS_C)
    const T* h_prev,  // [B,H] h_{t-1}
    const int* lengths, const int t,
    T* gh,            // [B,GH] scratch: h_{t-1} W_hh^T
    T* saved,         // [B,SAVED H] out: what backward reads
    T* c_next,        // [B,H] out: c_t (HAS_C)
    T* h_next,        // [B,H] out: h_t
    T* y,             // [B,H] out: y_t
    const int B, const int H, const int flags) {
  __shared__ FusedShared<typename gl_compute<T>::type> sh;  // float for gl_bf16 storage
  const int j = blockIdx.x * FUSED_TILE + threadIdx.x;
  gl_step_forward<Cell, T>(sh, w_hh_T, Cell::G * H, j, H, gx, konst, c_prev, h_prev, lengths,
                           t, gh, saved, c_next, h_next, y, B, H, flags);
}

template <class Cell, typename T>
__global__ void fused_backward(
    const T* dg_prev,   // [B,GH] dGh of the step processed before this one
    const int has_prev, // 0: this is the first step processed
    const T* w_hh,      // [GH,H]
    const T* saved,     // [B,SAVED H] saved by the forward step
    const T* c,         // [B,H] c_t (HAS_C)
    const T* c_prev,    // [B,H] c_{t-1} (HAS_C)
    const T* h,         // [B,H] h_t (BWD_H)
    const T* h_prev,    // [B,H] h_{t-1} (BWD_HP)
    T* dh_next,         // [B,H] in/out: dL/dh_t in, the direct part of dL/dh_{t-1} out
    const T* dy,        // [B,H] dL/dy_t
    T* dc_next,         // [B,H] in/out: dL/dc_t in, dL/dc_{t-1} out (HAS_C)
    const int* lengths, const int t,
    const T* konst,     // [NCONST,H]
    T* dgx,             // [B,GH] out: gradient of the input projection
    T* dgh,             // [B,GH] out: gradient of the hidden projection (SPLIT_DGH)
    const int B, const int H, const int flags) {
  __shared__ FusedShared<typename gl_compute<T>::type> sh;
  const int j = blockIdx.x * FUSED_TILE + threadIdx.x;
  gl_step_backward<Cell, T>(sh, w_hh, H, j, dg_prev, has_prev, saved, c, c_prev, h, h_prev,
                            dh_next, dy, dc_next, lengths, t, konst, dgx, dgh, B, H, flags);
}

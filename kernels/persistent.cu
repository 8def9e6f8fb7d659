// persistent.cu: the whole sequence of one direction in ONE cooperative launch ("persistent"
// algorithm, gpulstm/backends/kernel_loop.py; cf. Diamos et al., "Persistent RNNs", ICML 2016).
//
// The per-step work is the fused kernels' (fused_step.cu: a block of U x R x Z threads owns U
// hidden units, all their gates, and R batch rows; the launcher picks a small U so that the
// grid spreads over the SMs, and Z so that a block has enough threads); the block loops over
// the time steps itself with one grid-wide barrier per step (step s + 1 reads the h_t / dG_t
// every block wrote in step s). With `resident` != 0 the block first copies its slice of the
// recurrent weights into dynamic shared memory, where it stays for all steps:
//   forward:  wsh[k][g][x] = W_hh^T[k, g H + j0 + x]   k < H, g < G, x < U
//   backward: wsh[m][x]    = W_hh[m, j0 + x]           m < G H,       x < U
// (zero for units j0 + x >= H; rows of gl_resident_ld(G, U) elements: see there). Without it
// the weights are read through L2 every step as in the fused kernels.
//
// Requirements (the launcher checks them, a cooperative launch enforces co-residency): every
// block resident at once; `barrier` a zeroed unsigned counter of this launch; buffers are the
// engine's whole-sequence arrays: gx, gates [T, B, G H]; S (and C) [T + 1, B, H] state slots;
// Y, dY [T, B, H]. Step order and slots as gpulstm.cells: forward t = s, prev = t, next = t + 1;
// reverse t = T - 1 - s, prev = t + 1, next = t; backward processes the steps in reverse order.
#include "gpulstm_common.cuh"
// (fused_step.cu precedes this file in the assembled source: FusedShared, the step functions)

// Grid-wide barrier. GPU: a monotonically increasing arrival counter (one arrival per block
// per barrier; barrier number n completes when the counter reaches n * gridDim), correct only
// when every block is resident (cooperative launch). Emulator: its cooperative scheduler.
__device__ __forceinline__ void gl_grid_sync(unsigned int* counter, unsigned int& target) {
#ifdef GPULSTM_EMULATED
  (void)counter;
  (void)target;
  gpulstm_emu_grid_sync();
#else
  const unsigned int nblocks = gridDim.x * gridDim.y * gridDim.z;
  target += nblocks;
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
    __threadfence();  // this block's writes before its arrival
    atomicAdd(counter, 1u);
    unsigned int seen;
    do {  // poll with an acquire load, not an atomic read-modify-write on one L2 address
      asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
    } while (seen < target);
    __threadfence();
  }
  __syncthreads();
#endif
}

// Row length (elements) of the resident weight copy: G U rounded up to an odd multiple of U.
// In fused_row_product a warp holds 32 / U reduction slices of U lanes, which read 32 / U
// consecutive rows at the same U columns. Rows an odd multiple m U apart start at i m U mod 32
// (i < 32 / U): distinct multiples of U, so the warp's 32 loads fall into 32 distinct banks
// (8-byte elements: the two half-warps' 16 into distinct bank pairs). A pad of one element
// (row i at bank i) makes slices overlap: 4-way conflicts at U = 8 (G U + 1 = 33). U = 32: one
// row per warp, no pad. Must match gpulstm.backends.kernel_loop.resident_ld.
__host__ __device__ __forceinline__ int gl_resident_ld(const int G, const int U) {
  return (U < 32 && G % 2 == 0) ? (G + 1) * U : G * U;
}

// Copies the block's weight slice to shared memory: dst[r * gl_resident_ld(G, U) + g * U + x]
// = src[r * ld + g * gstride + j0 + x] for r < rows, g < G, x < U (U = blockDim.x).
template <typename T>
__device__ __forceinline__ void gl_load_weights(T* dst, const T* src, const int rows,
                                                const int G, const int ld, const int gstride,
                                                const int H) {
  const int U = blockDim.x, j0 = blockIdx.x * U;
  const int n = rows * G * U, ldw = gl_resident_ld(G, U);
  const int nthreads = U * blockDim.y * blockDim.z;
  for (int i = (threadIdx.z * blockDim.y + threadIdx.y) * U + threadIdx.x; i < n; i += nthreads) {
    const int x = i % U;
    const int g = (i / U) % G;
    const int r = i / (G * U);
    dst[r * ldw + g * U + x] = j0 + x < H ? src[r * ld + g * gstride + j0 + x] : T(0);
  }
  __syncthreads();
}

extern __shared__ __align__(16) unsigned char gl_dynamic_smem[];

// The right operand for the step functions: the resident copy or global memory.
#define GL_RIGHT(G, global_ptr, global_ld, global_gstride)                                  \
  const T* right = resident ? wsh : (global_ptr);                                         \
  const int ldr = resident ? gl_resident_ld((G), int(blockDim.x)) : (global_ld);          \
  const int col = resident ? int(threadIdx.x) : int(blockIdx.x * blockDim.x + threadIdx.x); \
  const int gstride = resident ? int(blockDim.x) : (global_gstride);                      \
  (void)gstride;

// One signature for every cell, as the fused kernels' (gpulstm.cells.Cell.persistent_*_args):
// whole-sequence buffers, konst the cell's [NCONST, H] constants; buffers the cell does not
// use (cell_step.cuh) may be any buffer of the right type.

template <class Cell, typename T>
__global__ void persistent_forward(
    const T* gx,      // [T,B,GH]
    const T* w_hh_T,  // [H,GH]
    const T* konst,   // [NCONST,H]
    T* C,             // [T+1,B,H] cell states (HAS_C); slot prev read, slot next written
    T* S,             // [T+1,B,H] hidden states
    const int* lengths, const int nsteps, const int reverse,
    T* gh,            // [B,GH] scratch
    T* saved,         // [T,B,SAVED H] out
    T* Y,             // [T,B,H] out
    const int B, const int H, const int flags, const int resident, unsigned int* barrier) {
  constexpr int G = Cell::G;
  __shared__ FusedShared<T> sh;
  T* wsh = reinterpret_cast<T*>(gl_dynamic_smem);
  if (Cell::DENSE && resident) gl_load_weights(wsh, w_hh_T, H, G, G * H, H, H);
  GL_RIGHT(G, w_hh_T, G * H, H)
  const int BH = B * H, BG = B * G * H, BS = B * Cell::SAVED * H;
  unsigned int target = 0;
  for (int s = 0; s < nsteps; ++s) {
    const int t = reverse ? nsteps - 1 - s : s;
    const int prev = reverse ? t + 1 : t, next = reverse ? t : t + 1;
    gl_step_forward<Cell, T>(sh, right, ldr, col, gstride, gx + t * BG, konst, C + prev * BH,
                             S + prev * BH, lengths, t, gh, saved + t * BS, C + next * BH,
                             S + next * BH, Y + t * BH, B, H, flags);
    gl_grid_sync(barrier, target);
  }
}

// Backward: dGh [T, B, G H] the hidden-projection gradients the product reads (dGx itself
// unless Cell::SPLIT_DGH); dh, dc [B, H] the carried state gradients (in: dL/dh_T, dL/dc_T;
// out: before the final dh += dGh_first W_hh that the caller adds).

template <class Cell, typename T>
__global__ void persistent_backward(
    const T* w_hh,     // [GH,H]
    const T* saved,    // [T,B,SAVED H]
    const T* C,        // [T+1,B,H] (HAS_C)
    const T* S,        // [T+1,B,H]
    T* dh,             // [B,H] in/out
    const T* dY,       // [T,B,H]
    T* dc,             // [B,H] in/out (HAS_C)
    const int* lengths, const int nsteps, const int reverse,
    const T* konst,    // [NCONST,H]
    T* dGx,            // [T,B,GH] out
    T* dGh,            // [T,B,GH] out (SPLIT_DGH; else dGx)
    const int B, const int H, const int flags, const int resident, unsigned int* barrier) {
  constexpr int G = Cell::G;
  __shared__ FusedShared<T> sh;
  T* wsh = reinterpret_cast<T*>(gl_dynamic_smem);
  if (Cell::DENSE && resident) gl_load_weights(wsh, w_hh, G * H, 1, H, 0, H);
  GL_RIGHT(1, w_hh, H, 0)
  const int BH = B * H, BG = B * G * H, BS = B * Cell::SAVED * H;
  unsigned int target = 0;
  for (int s = 0; s < nsteps; ++s) {
    const int t = reverse ? s : nsteps - 1 - s;
    const int prev = reverse ? t + 1 : t, next = reverse ? t : t + 1;
    const int last = reverse ? t - 1 : t + 1;  // the step processed before this one
    gl_step_backward<Cell, T>(sh, right, ldr, col, dGh + (s ? last : t) * BG, s > 0,
                              saved + t * BS, C + next * BH, C + prev * BH, S + next * BH,
                              S + prev * BH, dh, dY + t * BH, dc, lengths, t, konst,
                              dGx + t * BG, dGh + t * BG, B, H, flags);
    gl_grid_sync(barrier, target);
  }
}

#undef GL_RIGHT

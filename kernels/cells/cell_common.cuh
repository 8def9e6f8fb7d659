// cell_common.cuh: what every cell header (kernels/cells/<cell>.cuh) shares.
//
// A cell header is one struct with the cell's shape as constants and its pointwise math for ONE
// unit j of ONE batch row at ONE time step, forward and backward. The generic kernels (the
// stepwise kernels of kernels/<cell>_*.cu, fused_step.cu, persistent.cu) and the compiled cpu
// loop (kernels/cpu/sequence.cpp) do everything else: indexing, the recurrent product, the
// masking for variable lengths (a row with t >= lengths[b] keeps its state, writes y = 0 and a
// zero gate gradient: the cell never sees lengths). The readable spec of each struct is its
// class in gpulstm/cells.py with the NumPy step of gpulstm/backends/numpy_pointwise.py.
//
// Tests: tests/test_cell_headers.py checks each header on its own (forward against the NumPy
// step and the published formulas, backward against finite differences); the generic kernels
// (kernels/cell_step.cuh and the kernels built on it) are checked through the emulated
// execution against the NumPy reference. The compiled cpu loop (kernels/cpu/sequence.cpp)
// includes the LSTM, GRU and RNN headers too (math policy CpuMath), checked through the cpu
// execution against the same reference.
//
// Plain C++ (C++17): no system or CUDA headers, device qualifiers only behind GPULSTM_HD, so
// the same file compiles with NVRTC, with the host compiler under the CPU emulation
// (gpulstm/emulator/cuda_on_cpu.h defines __host__/__device__) and with plain g++/clang++.
//
// The members of a cell struct:
//   G       gate blocks of the projections gx, gh ([B, G H] rows; gate q of unit j at q H + j)
//   SAVED   columns per unit of the saved buffer [T, B, SAVED H] that backward reads (0: none)
//   HAS_C   a cell state c besides h (LSTM, CIFG)
//   DENSE   the recurrence is the GEMM h_{t-1} W_hh^T (gh); false: elementwise (IndRNN's u)
//   NCONST  per-unit constant rows the step reads ([NCONST, H]: LSTM peepholes, GRU b_hn,
//           IndRNN u); 0: none
//   BWD_H, BWD_HP  backward reads h_t / h_{t-1} (the generic kernels load only what is read)
//   SPLIT_DGH  backward writes a hidden-side pre-activation gradient dgh that differs from dgx
//           (GRU: r * dn); false: dgh is dgx and the cell writes dgx only
//   forward<M>(gx, gh, gs, k, ks, cp, hp, flags, saved, ss, c, h)
//           gx[q gs], gh[q gs]: gate q's pre-activations (gh unread unless DENSE; biases: the
//           caller folded what the cell's fold_bias folds into gx); k[q ks]: constant q;
//           cp, hp: c_{t-1} (0 without HAS_C), h_{t-1}; writes saved[q ss] for q < SAVED and
//           the unmasked new state c (untouched without HAS_C), h
//   backward<M>(saved, ss, k, ks, c, cp, h, hp, dh, dc, flags, dgx, dgh, gs, dhp)
//           for an ACTIVE row only: c, cp: c_t, c_{t-1}; h, hp: h_t, h_{t-1}; dh: dL/dh_t
//           (total); dc in/out: dL/dc_t in, dL/dc_{t-1} out (HAS_C only); writes dgx[q gs]
//           (and dgh[q gs] with SPLIT_DGH) for q < G and dhp, the direct part of
//           dL/dh_{t-1} (the caller adds dgh W_hh for DENSE cells)
// M is the math policy: M::sigmoid(x), M::tanh(x) for float and double (GlCudaMath on the
// device; the cpu loop passes its vectorisable one).
// T is the compute type of the values, S (default T) the storage type of the buffers the
// pointers address: the bf16 kernels pass S = gl_bf16 (kernels/gpulstm_common.cuh) with
// T = float, so every read widens (gl_bf16 converts to float implicitly and has no arithmetic
// of its own: the built-in float operators apply) and every store rounds once.
#ifndef GPULSTM_CELL_COMMON_CUH
#define GPULSTM_CELL_COMMON_CUH

#include "../kernel_flags.cuh"

#ifndef GPULSTM_HD
#if defined(__CUDACC__) || defined(__CUDACC_RTC__) || defined(GPULSTM_EMULATED)
#define GPULSTM_HD __host__ __device__ __forceinline__
#else
#define GPULSTM_HD inline
#endif
#endif

// gl_preact<M>(a, b): a gate's pre-activation gx + gh, as the headers form it. A math policy
// may declare ``static constexpr bool presummed = true``: its caller's GEMM has already added
// gx into the buffer it passes as gx (the cpu loop's recurrent GEMM starts from gx), and the
// pre-activation is that value alone (the caller passes the same pointer as gh; the load is
// dead). Policies without the member (the device's, the tests') get a + b.
template <class...>
struct gl_void { typedef void type; };
template <class M, class = void>
struct gl_presummed { static constexpr bool value = false; };
template <class M>
struct gl_presummed<M, typename gl_void<decltype(M::presummed)>::type> {
  static constexpr bool value = M::presummed;
};
template <class M, class T>
GPULSTM_HD T gl_preact(const T a, const T b) {
  return gl_presummed<M>::value ? a : a + b;
}

#endif  // GPULSTM_CELL_COMMON_CUH

// cell_step.cuh: one cell's pointwise step for element k = b * H + j of the [B, H] state, for
// ANY cell header (kernels/cells/<cell>.cuh): the indexing, the masking for variable lengths
// and the state bookkeeping every cell shares, around the cell's own math (Cell::forward,
// Cell::backward). The stepwise kernels (kernels/<cell>_forward.cu, _backward.cu), the fused
// kernels (fused_step.cu) and the persistent kernels (persistent.cu) all call these two.
//
// Layouts (rows of the [B, *] buffers of one step): gx, gh, dgx, dgh [B, G H] (gate q of unit
// j at q H + j); saved [B, SAVED H] (column q at q H + j); konst [NCONST, H]; c, h [B, H].
// A row with t >= lengths[b] keeps its state (c_next = c_prev, h_next = h_prev), writes y = 0
// and a zero gate gradient, and passes dh / dc through: the cell never sees lengths.
// LSTM_PROJ (kernel_flags.cuh): h_next receives the cell's raw h for every row and y is not
// touched (the projection and its masking follow in lstm_proj_forward); backward reads dL/dh
// from dh_in and leaves dh_next alone.
// Pointers a cell does not use may be null: c_prev, c_next, c, dc_next without HAS_C; konst
// with NCONST == 0; saved with SAVED == 0; gh without DENSE; h without BWD_H, h_prev in the
// backward without BWD_HP; dgh without SPLIT_DGH.
#ifndef GPULSTM_CELL_STEP_CUH
#define GPULSTM_CELL_STEP_CUH
#include "gpulstm_common.cuh"

// The device math policy of the cell headers (M): the kernels' sigmoid and tanh.
struct GlCudaMath {
  template <typename T>
  static __device__ __forceinline__ T sigmoid(const T x) { return gl_sigmoid(x); }
  template <typename T>
  static __device__ __forceinline__ T tanh(const T x) { return gl_tanh(x); }
};

// S: the buffers' storage type (float, double, or gl_bf16 with float compute: gl_compute).
template <class Cell, typename S>
__device__ __forceinline__ void gl_cell_forward_at(
    const int k, const S* gx, const S* gh, const S* konst, const S* c_prev, const S* h_prev,
    const int* lengths, const int t, S* saved, S* c_next, S* h_next, S* y, const int B,
    const int H, const int flags) {
  using T = typename gl_compute<S>::type;
  (void)B;
  const int b = k / H;
  const int j = k - b * H;
  const int gi = b * Cell::G * H + j;
  const T cp = Cell::HAS_C ? T(c_prev[k]) : T(0);
  const T hp = T(h_prev[k]);
  T c = cp, h = T(0);
  Cell::template forward<GlCudaMath, T, S>(gx + gi, Cell::DENSE ? gh + gi : gx + gi, H,
                                           konst + j, H, cp, hp, flags,
                                           saved + b * Cell::SAVED * H + j, H, c, h);
  const bool act = active(lengths, b, t);
  if (Cell::HAS_C) c_next[k] = act ? c : cp;
  if (flags & LSTM_PROJ) {
    h_next[k] = h;
  } else {
    h_next[k] = act ? h : hp;
    y[k] = act ? h : T(0);
  }
}

template <class Cell, typename S>
__device__ __forceinline__ void gl_cell_backward_at(
    const int k, const S* saved, const S* c, const S* c_prev, const S* h, const S* h_prev,
    const S* dh_in, S* dh_next, const S* dy, S* dc_next, const int* lengths, const int t,
    const S* konst, S* dgx, S* dgh, const int B, const int H, const int flags) {
  using T = typename gl_compute<S>::type;
  (void)B;
  const int b = k / H;
  const int j = k - b * H;
  const int gi = b * Cell::G * H + j;
  if (!active(lengths, b, t)) {
    for (int q = 0; q < Cell::G; ++q) dgx[gi + q * H] = T(0);
    if (Cell::SPLIT_DGH)
      for (int q = 0; q < Cell::G; ++q) dgh[gi + q * H] = T(0);
    return;  // dc_next and dh_next pass through unchanged
  }
  const bool proj = flags & LSTM_PROJ;
  const T dh = proj ? T(dh_in[k]) : T(dh_next[k]) + T(dy[k]);
  T dc = Cell::HAS_C ? T(dc_next[k]) : T(0);
  T dhp = T(0);
  Cell::template backward<GlCudaMath, T, S>(
      saved + b * Cell::SAVED * H + j, H, konst + j, H, Cell::HAS_C ? T(c[k]) : T(0),
      Cell::HAS_C ? T(c_prev[k]) : T(0), Cell::BWD_H ? T(h[k]) : T(0),
      Cell::BWD_HP ? T(h_prev[k]) : T(0), dh, dc, flags, dgx + gi,
      Cell::SPLIT_DGH ? dgh + gi : dgx + gi, H, dhp);
  if (Cell::HAS_C) dc_next[k] = dc;
  if (!proj) dh_next[k] = dhp;
}

#endif  // GPULSTM_CELL_STEP_CUH

// indrnn.cuh: the independently recurrent cell (IndRNN; Li et al. 2018): an elementwise
// recurrence h = act(gx + u h_{t-1}) with u [H] the recurrent weight (the constant, [1, H];
// weight_hh_l{k} as a vector), act relu (RNN_RELU, the default) or tanh; no W_hh GEMM
// (DENSE = false: gh is not read). Spec: gpulstm/cells.py IndRNNCell.
// Nothing saved: da = act'(h) dh, dL/dh_{t-1} = da u (all direct); dL/du = sum da h_{t-1}
// is a whole-sequence reduction in the Python cell.
#ifndef GPULSTM_CELL_INDRNN_CUH
#define GPULSTM_CELL_INDRNN_CUH
#include "rnn.cuh"

struct IndRnnCell {
  static constexpr int G = 1, SAVED = 0, NCONST = 1;
  static constexpr bool HAS_C = false, DENSE = false, SPLIT_DGH = false;
  static constexpr bool BWD_H = true, BWD_HP = false;

  template <class M, class T, class S = T>
  static GPULSTM_HD void forward(const S* gx, const S* gh, const int gs, const S* k, const int ks,
                                 const T cp, const T hp, const int flags, S* saved,
                                 const int ss, T& c, T& h) {
    (void)gh, (void)gs, (void)ks, (void)cp, (void)saved, (void)ss, (void)c;
    h = gl_rnn_act<M>(gx[0] + k[0] * hp, flags);
  }

  template <class M, class T, class S = T>
  static GPULSTM_HD void backward(const S* saved, const int ss, const S* k, const int ks,
                                  const T c, const T cp, const T h, const T hp, const T dh,
                                  T& dc, const int flags, S* dgx, S* dgh, const int gs, T& dhp) {
    (void)saved, (void)ss, (void)ks, (void)c, (void)cp, (void)hp, (void)dc, (void)dgh, (void)gs;
    const T da = gl_rnn_act_grad(dh, h, flags);
    dgx[0] = da;
    dhp = da * k[0];
  }
};

#endif  // GPULSTM_CELL_INDRNN_CUH

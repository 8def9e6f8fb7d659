// rnn.cuh: the simple (Elman) RNN cell, h = tanh(gx + gh), or relu with RNN_RELU; one unit of
// one step. Spec: gpulstm/cells.py RNNCell, numpy_pointwise.py rnn_forward/backward.
// Nothing saved (backward reads h_t from the state history): da = dh (1 - h^2) for tanh,
// dh [not h <= 0] for relu; no direct part of dL/dh_{t-1} (all of it is da W_hh).
#ifndef GPULSTM_CELL_RNN_CUH
#define GPULSTM_CELL_RNN_CUH
#include "cell_common.cuh"

// The activation of RNN and IndRNN: relu as max(a, 0) with NaN propagated (like np.maximum),
// or tanh; and its derivative from the output h.
template <class M, class T>
GPULSTM_HD T gl_rnn_act(const T a, const int flags) {
  return (flags & RNN_RELU) ? (a < T(0) ? T(0) : a) : M::tanh(a);
}
template <class T>
GPULSTM_HD T gl_rnn_act_grad(const T dh, const T h, const int flags) {
  return (flags & RNN_RELU) ? (h <= T(0) ? T(0) : dh) : dh * (T(1) - h * h);  // torch's at NaN
}

struct RnnCell {
  static constexpr int G = 1, SAVED = 0, NCONST = 0;
  static constexpr bool HAS_C = false, DENSE = true, SPLIT_DGH = false;
  static constexpr bool BWD_H = true, BWD_HP = false;

  template <class M, class T, class S = T>
  static GPULSTM_HD void forward(const S* gx, const S* gh, const int gs, const S* k, const int ks,
                                 const T cp, const T hp, const int flags, S* saved,
                                 const int ss, T& c, T& h) {
    (void)gs, (void)k, (void)ks, (void)cp, (void)hp, (void)saved, (void)ss, (void)c;
    h = gl_rnn_act<M>(gl_preact<M>(T(gx[0]), T(gh[0])), flags);
  }

  template <class M, class T, class S = T>
  static GPULSTM_HD void backward(const S* saved, const int ss, const S* k, const int ks,
                                  const T c, const T cp, const T h, const T hp, const T dh,
                                  T& dc, const int flags, S* dgx, S* dgh, const int gs, T& dhp) {
    (void)saved, (void)ss, (void)k, (void)ks, (void)c, (void)cp, (void)hp, (void)dc, (void)dgh;
    (void)gs;
    dgx[0] = gl_rnn_act_grad(dh, h, flags);
    dhp = T(0);
  }
};

#endif  // GPULSTM_CELL_RNN_CUH

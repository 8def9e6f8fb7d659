// cifg.cuh: the coupled input-forget gate LSTM (CIFG; Greff et al. 2017, "LSTM: A Search Space
// Odyssey"): the input gate is i = 1 - f, so three gate blocks f, g, o; one unit of one step.
// Spec: gpulstm/cells.py CIFGCell.
//
//   f = sigma(a_f)   g = tanh(a_g)   c = f c_{t-1} + (1 - f) g   o = sigma(a_o)   h = o tanh(c)
// with a = gx + gh. Saved: f, g, o.
//   da_o = dh tanh(c) o (1 - o)    dc += dh o (1 - tanh(c)^2)
//   da_f = dc (c_{t-1} - g) f (1 - f)   da_g = dc (1 - f) (1 - g^2)   dc_{t-1} = dc f
#ifndef GPULSTM_CELL_CIFG_CUH
#define GPULSTM_CELL_CIFG_CUH
#include "cell_common.cuh"

struct CifgCell {
  static constexpr int G = 3, SAVED = 3, NCONST = 0;
  static constexpr bool HAS_C = true, DENSE = true, SPLIT_DGH = false;
  static constexpr bool BWD_H = false, BWD_HP = false;

  template <class M, class T, class S = T>
  static GPULSTM_HD void forward(const S* gx, const S* gh, const int gs, const S* k, const int ks,
                                 const T cp, const T hp, const int flags, S* saved,
                                 const int ss, T& c, T& h) {
    (void)k, (void)ks, (void)hp, (void)flags;
    const T f = M::sigmoid(gl_preact<M>(T(gx[0]), T(gh[0])));
    const T g = M::tanh(gl_preact<M>(T(gx[gs]), T(gh[gs])));
    const T o = M::sigmoid(gl_preact<M>(T(gx[2 * gs]), T(gh[2 * gs])));
    c = f * cp + (T(1) - f) * g;
    h = o * M::tanh(c);
    saved[0] = f;
    saved[ss] = g;
    saved[2 * ss] = o;
  }

  template <class M, class T, class S = T>
  static GPULSTM_HD void backward(const S* saved, const int ss, const S* k, const int ks,
                                  const T c, const T cp, const T h, const T hp, const T dh,
                                  T& dc, const int flags, S* dgx, S* dgh, const int gs, T& dhp) {
    (void)k, (void)ks, (void)h, (void)hp, (void)flags, (void)dgh;
    const T f = saved[0];
    const T g = saved[ss];
    const T o = saved[2 * ss];
    const T tc = M::tanh(c);
    const T dao = dh * tc * o * (T(1) - o);
    const T d = dc + dh * o * (T(1) - tc * tc);
    dgx[0] = d * (cp - g) * f * (T(1) - f);
    dgx[gs] = d * (T(1) - f) * (T(1) - g * g);
    dgx[2 * gs] = dao;
    dc = d * f;
    dhp = T(0);
  }
};

#endif  // GPULSTM_CELL_CIFG_CUH

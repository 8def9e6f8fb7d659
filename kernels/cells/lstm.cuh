// lstm.cuh: the LSTM cell (PyTorch's gate order i, f, g, o), one unit of one step.
// Spec: gpulstm/cells.py LSTMCell, gpulstm/backends/numpy_pointwise.py lstm_forward/backward.
//
//   i = sigma(a_i + p_i c_{t-1})   f = sigma(a_f + p_f c_{t-1})   g = tanh(a_g)
//   c = f c_{t-1} + i g            o = sigma(a_o + p_o c)         h = o tanh(c)
// with a = gx + gh; peepholes p (the constants, [3, H]) only with LSTM_PEEPHOLE; f = 1 with
// LSTM_NO_FORGET. Saved: i, f, g, o.
//   da_o = dh tanh(c) o (1 - o)     dc += dh o (1 - tanh(c)^2)  [+ da_o p_o]
//   da_i = dc g i (1 - i)   da_f = dc c_{t-1} f (1 - f) (0 without forget gate)
//   da_g = dc i (1 - g^2)   dc_{t-1} = dc f  [+ da_i p_i + da_f p_f]
#ifndef GPULSTM_CELL_LSTM_CUH
#define GPULSTM_CELL_LSTM_CUH
#include "cell_common.cuh"

struct LstmCell {
  static constexpr int G = 4, SAVED = 4, NCONST = 3;
  static constexpr bool HAS_C = true, DENSE = true, SPLIT_DGH = false;
  static constexpr bool BWD_H = false, BWD_HP = false;

  template <class M, class T, class S = T>
  static GPULSTM_HD void forward(const S* gx, const S* gh, const int gs, const S* k, const int ks,
                                 const T cp, const T hp, const int flags, S* saved,
                                 const int ss, T& c, T& h) {
    (void)hp;
    T ai = gl_preact<M>(T(gx[0]), T(gh[0]));
    T af = gl_preact<M>(T(gx[gs]), T(gh[gs]));
    const T ag = gl_preact<M>(T(gx[2 * gs]), T(gh[2 * gs]));
    T ao = gl_preact<M>(T(gx[3 * gs]), T(gh[3 * gs]));
    if (flags & LSTM_PEEPHOLE) {
      ai = ai + k[0] * cp;
      af = af + k[ks] * cp;
    }
    const T i = M::sigmoid(ai);
    const T f = (flags & LSTM_NO_FORGET) ? T(1) : M::sigmoid(af);
    const T g = M::tanh(ag);
    c = f * cp + i * g;
    if (flags & LSTM_PEEPHOLE) ao = ao + k[2 * ks] * c;
    const T o = M::sigmoid(ao);
    h = o * M::tanh(c);
    saved[0] = i;
    saved[ss] = f;
    saved[2 * ss] = g;
    saved[3 * ss] = o;
  }

  template <class M, class T, class S = T>
  static GPULSTM_HD void backward(const S* saved, const int ss, const S* k, const int ks,
                                  const T c, const T cp, const T h, const T hp, const T dh,
                                  T& dc, const int flags, S* dgx, S* dgh, const int gs, T& dhp) {
    (void)h, (void)hp, (void)dgh;
    const T i = saved[0];
    const T f = saved[ss];
    const T g = saved[2 * ss];
    const T o = saved[3 * ss];
    const T tc = M::tanh(c);
    const T dao = dh * tc * o * (T(1) - o);
    T d = dc + dh * o * (T(1) - tc * tc);
    if (flags & LSTM_PEEPHOLE) d = d + dao * k[2 * ks];
    const T dai = d * g * i * (T(1) - i);
    const T daf = (flags & LSTM_NO_FORGET) ? T(0) : d * cp * f * (T(1) - f);
    const T dag = d * i * (T(1) - g * g);
    T dcp = d * f;
    if (flags & LSTM_PEEPHOLE) dcp = dcp + (dai * k[0] + daf * k[ks]);  // the reference's order
    dgx[0] = dai;
    dgx[gs] = daf;
    dgx[2 * gs] = dag;
    dgx[3 * gs] = dao;
    dc = dcp;
    dhp = T(0);
  }
};

#endif  // GPULSTM_CELL_LSTM_CUH

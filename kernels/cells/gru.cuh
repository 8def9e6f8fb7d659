// gru.cuh: the GRU cell, PyTorch's formulation (gate order r, z, n; the reset gate multiplies
// the hidden projection including its bias b_hn), one unit of one step.
// Spec: gpulstm/cells.py GRUCell, gpulstm/backends/numpy_pointwise.py gru_forward/backward.
//
//   r = sigma(gx_r + gh_r)   z = sigma(gx_z + gh_z)   hn = gh_n + b_hn (the constant, [1, H])
//   n = tanh(gx_n + r hn)    h = n + z (h_{t-1} - n)            saved: r, z, n, hn
//   da_n = dh (1 - z) (1 - n^2)   da_r = da_n hn r (1 - r)   da_z = dh (h_{t-1} - n) z (1 - z)
//   dgx = (da_r, da_z, da_n)      dgh = (da_r, da_z, da_n r)  dL/dh_{t-1} direct: dh z
#ifndef GPULSTM_CELL_GRU_CUH
#define GPULSTM_CELL_GRU_CUH
#include "cell_common.cuh"

struct GruCell {
  static constexpr int G = 3, SAVED = 4, NCONST = 1;
  static constexpr bool HAS_C = false, DENSE = true, SPLIT_DGH = true;
  static constexpr bool BWD_H = false, BWD_HP = true;

  template <class M, class T, class S = T>
  static GPULSTM_HD void forward(const S* gx, const S* gh, const int gs, const S* k, const int ks,
                                 const T cp, const T hp, const int flags, S* saved,
                                 const int ss, T& c, T& h) {
    (void)ks, (void)cp, (void)flags, (void)c;
    const T r = M::sigmoid(gl_preact<M>(T(gx[0]), T(gh[0])));
    const T z = M::sigmoid(gl_preact<M>(T(gx[gs]), T(gh[gs])));
    const T hn = gh[2 * gs] + k[0];
    const T n = M::tanh(gx[2 * gs] + r * hn);
    h = n + z * (hp - n);
    saved[0] = r;
    saved[ss] = z;
    saved[2 * ss] = n;
    saved[3 * ss] = hn;
  }

  template <class M, class T, class S = T>
  static GPULSTM_HD void backward(const S* saved, const int ss, const S* k, const int ks,
                                  const T c, const T cp, const T h, const T hp, const T dh,
                                  T& dc, const int flags, S* dgx, S* dgh, const int gs, T& dhp) {
    (void)k, (void)ks, (void)c, (void)cp, (void)h, (void)dc, (void)flags;
    const T r = saved[0];
    const T z = saved[ss];
    const T n = saved[2 * ss];
    const T hn = saved[3 * ss];
    const T dan = dh * (T(1) - z) * (T(1) - n * n);
    const T dar = dan * hn * r * (T(1) - r);
    const T daz = dh * (hp - n) * z * (T(1) - z);
    dgx[0] = dar;
    dgx[gs] = daz;
    dgx[2 * gs] = dan;
    dgh[0] = dar;
    dgh[gs] = daz;
    dgh[2 * gs] = dan * r;
    dhp = dh * z;
  }
};

#endif  // GPULSTM_CELL_GRU_CUH

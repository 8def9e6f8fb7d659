// Whole-sequence forward and BPTT loops for the CPU execution (backend "cpu").
//
// One call runs the time loop of one layer and direction, in place in the engine's buffers,
// with the same math, buffer layout and masking rules as the stepwise loop of
// gpulstm/engine.py + gpulstm/cells.py + gpulstm/backends/numpy_pointwise.py (the reference;
// see its docstrings for every formula used here). Differences from the reference are
// rounding only: the recurrent GEMM sums in its own order (and adds the input projection as
// its initial value), and exp/sigmoid/tanh are the vectorisable polynomial (double) and
// rational (float tanh and sigmoid) versions below.
//
// Threads: row b of every state depends only on row b of the previous state (the recurrence
// never mixes batch rows), so the batch is split into contiguous row blocks, one per OpenMP
// thread, and every thread runs the whole time loop on its rows without any barrier. The
// LSTM forward of 1-8 rows splits the hidden units instead (one barrier per step).
// The exported gemm_* and transpose_* serve the execution's whole-sequence GEMMs.
//
// Layouts (row-major, C-contiguous):
//   gx [T,B,G*H]   w_hh [G*H,Hs] and w_ih [G*H,I] as the model stores them (the forward packs
//   their transposes once per call)
//   S [T+1,B,Hs]   C [T+1,B,H]   gates [T,B,W] with time stride gates_ts (0: one scratch
//   slot reused by every step, the inference path that saves nothing)   Y [T,B,Hs]
//   (a forward's S and C may instead be a ring of 2 slots, the inference path: ``slots``)
//   lengths int32 [B]: row b is active at time t when t < lengths[b].
// Step order: step s processes t = s (forward) or t = T-1-s (reverse); it reads state slot
// prev = t (forward) / t+1 (reverse) and writes slot nxt = t+1 / t (modulo slots).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>
#include <atomic>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <pthread.h>
#include <cblas.h>  // scipy-openblas32 (prefixed symbols: scipy_cblas_sgemm, ...)
#ifdef _OPENMP
#include <omp.h>
#endif

// The cells' pointwise math: the headers the CUDA kernels include (kernels/cells/<cell>.cuh,
// plain C++), inlined into this file's vectorised unit loops with the math policy CpuMath
#ifndef GPULSTM_HD  // the build defines it too, for the headers it -includes (every cell's)
#define GPULSTM_HD __attribute__((always_inline)) inline
#endif
#include "../cells/lstm.cuh"
#include "../cells/gru.cuh"
#include "../cells/rnn.cuh"

#define GL_EXPORT extern "C" __attribute__((visibility("default")))
// the GEMM's building blocks: GCC otherwise leaves some of them out of line in the larger
// instantiations (measured 2-4 % slower GEMMs)
#define GL_INLINE __attribute__((always_inline)) static inline

namespace {

// ---- vectorisable exp, sigmoid, tanh ------------------------------------------------------
// exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 (Cody-Waite split of ln 2),
// exp(r) by its Taylor polynomial on |r| <= ln2/2: degree 12 for double (truncation error
// < 2e-16 relative), degree 7 for float (< 5e-9). The argument is clamped to the range where
// 2^n is a normal number and exp(x) is finite, so sigmoid(x) = 1/(1 + exp(-x)) is ~1e-39
// (float) / ~1e-308 (double) where the reference gives 0. NaN propagates (the clamps are
// comparisons that are false for NaN). n comes from the round-to-nearest "shifter" trick:
// adding 1.5 * 2^52 (2^23) leaves n in the low mantissa bits, no float-to-int conversion.
template <class R> struct Fp;
template <> struct Fp<double> {
  using U = uint64_t;
  static constexpr double lo = -708.0, hi = 709.0, shifter = 6755399441055744.0;  // 1.5*2^52
  static constexpr double log2e = 1.4426950408889634, ln2_hi = 6.93145751953125E-1,
                          ln2_lo = 1.42860682030941723212E-6;
  static constexpr int mant = 52, bias = 1023;
  static inline double poly(double r) {
    double p = 1.0 / 479001600.0;                     // 1/12!
    p = p * r + 1.0 / 39916800.0;  p = p * r + 1.0 / 3628800.0;  p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;     p = p * r + 1.0 / 5040.0;     p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;       p = p * r + 1.0 / 24.0;       p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;               p = p * r + 1.0;              p = p * r + 1.0;
    return p;
  }
  // tanh(x) = x P(x^2) for |x| < small: Taylor to x^17 (error < 1e-18 relative at 0.1)
  static constexpr double small = 0.1;
  static inline double tanh_small(double x) {
    double z = x * x;
    double p = -443861162.0 / 1856156927625.0;        // x^17 coefficient
    p = p * z + 6404582.0 / 10854718875.0;  p = p * z - 929569.0 / 638512875.0;
    p = p * z + 21844.0 / 6081075.0;        p = p * z - 1382.0 / 155925.0;
    p = p * z + 62.0 / 2835.0;              p = p * z - 17.0 / 315.0;
    p = p * z + 2.0 / 15.0;                 p = p * z - 1.0 / 3.0;
    return x + x * z * p;
  }
};
template <> struct Fp<float> {
  using U = uint32_t;
  static constexpr float lo = -87.0f, hi = 88.0f, shifter = 12582912.0f;  // 1.5*2^23
  static constexpr float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f,
                         ln2_lo = -2.12194440e-4f;
  static constexpr int mant = 23, bias = 127;
  static inline float poly(float r) {
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;  p = p * r + 1.0f / 120.0f;  p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;    p = p * r + 0.5f;           p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p;
  }
};

template <class R>
static inline R vexp(R x) {
  using F = Fp<R>;
  using U = typename F::U;
  x = x < F::lo ? F::lo : x;
  x = x > F::hi ? F::hi : x;
  R kd = x * F::log2e + F::shifter;
  U ki;
  std::memcpy(&ki, &kd, sizeof(R));
  R n = kd - F::shifter;
  R r = x - n * F::ln2_hi;
  r = r - n * F::ln2_lo;
  U bits = (ki + (U)F::bias) << F::mant;  // 2^n (n in the low bits of ki, two's complement)
  R scale;
  std::memcpy(&scale, &bits, sizeof(R));
  return F::poly(r) * scale;
}

template <class R>
static inline R vsigmoid(R x) { return R(1) / (R(1) + vexp<R>(-x)); }

// tanh(|x|) = 1 - 2 / (exp(2|x|) + 1), Taylor polynomial near 0 where that form cancels;
// the sign put back by copysign (tanh(-0) = -0)
template <class R>
static inline R vtanh(R x) {
  const R ax = std::fabs(x);
  const R r = ax < Fp<R>::small ? Fp<R>::tanh_small(ax)
                                : R(1) - R(2) / (vexp<R>(R(2) * ax) + R(1));
  return std::copysign(r, x);
}

// float: tanh(x) = x P(x^2) / Q(x^2) on |x| < 9, +-1 beyond (where tanh rounds to +-1), P
// and Q of degree 4 (tools/fit_tanh.py: relative error 2.1e-8 in exact arithmetic, measured
// <= 2.6 ulp in float including rounding); no exp, one division, nothing to blend near 0:
// a third cheaper than the exp form above. sigmoid(x) = (1 + tanh(x / 2)) / 2: absolute
// error <= 1.4 ulp of 1 (its relative accuracy for tiny values is lost: sigmoid(x) is 0
// below x = -18, where the true value is under 1.6e-8). NaN propagates: the clamp and the
// |x| >= 9 test are comparisons that are false for NaN. Evaluated on |x| with the sign put
// back by copysign: the same bits as on x (P and Q are even, the product odd), one select
// instead of three; with -fno-trapping-math (the build flags) the LSTM step measured 1.2 ->
// 0.7 ns per element on an AVX-512 core (GCC otherwise masks the arithmetic of each branch).
template <>
inline float vtanh<float>(float x) {
  const float ax = std::fabs(x);
  const float xc = ax > 9.0f ? 9.0f : ax;
  const float z = xc * xc;
  float p = 1.3354330530290781e-08f;
  p = p * z + 2.0608864485083863e-05f;
  p = p * z + 0.003495576142318167f;
  p = p * z + 0.13381016048223093f;
  p = p * z + 0.9999999795055291f;
  float q = 7.776428447570094e-07f;
  q = q * z + 0.0003285614274312583f;
  q = q * z + 0.02587693812148431f;
  q = q * z + 0.46714331662389685f;
  q = q * z + 1.0f;
  const float r = ax >= 9.0f ? 1.0f : xc * p / q;
  return std::copysign(r, x);
}

template <>
inline float vsigmoid<float>(float x) { return 0.5f + 0.5f * vtanh<float>(0.5f * x); }

// ---- the time loops' GEMM: C[M, N] = C0 + A[M, K] @ W[K, N] -------------------------------
// A [M, K] (row stride lda). C0 is C itself (accumulate), another matrix (row stride ld0; 0
// broadcasts one row: the bias), or null (zeros). The per-step products of a time loop (a
// few rows; gemm() below says what it measured against a BLAS call per step).
// Blocking: k in blocks of KC, rows in blocks of MC; each (k, row) block of A stays in
// L1/L2 while every column panel of W passes over it. A is read in place: the hardware
// prefetchers follow a tile's 8 row streams (packing it measured 0-30 % slower). Only the
// row groups of a chunk of time steps (grp, below) are packed. W is packed (pack_w). A
// register tile of RN rows x NV vectors of C stays in vector registers while k runs over
// the block. 8 rows x 3 vectors (24 accumulators; 3 loads of W and 8 broadcasts per 24 FMAs)
// measured fastest on an AVX-512 core; fewer than 4 rows (B = 1) use 8-vector tiles to hide
// the FMA latency. Narrow remainders of rows use tiles of 4, 2, 1 rows, and of columns 2
// and 1 vectors and a scalar loop.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif
// The main register tile: 8 rows x 3 vectors = 24 accumulators with AVX-512's 32 registers;
// with 16 vector registers (AVX2, SSE) 24 accumulators spill, so 6 x 2 = 12 there. Measured
// on a 2-core AMD EPYC with AVX2 and no AVX-512, float32, 1 thread, best of 7 (shared
// machine): whole-sequence GEMMs 41-55 -> 60-88 GFLOP/s; LSTM fwd+bwd vs torch at
// (T,B,I,H) = (100,64,512,512) 1.67 -> 0.72, (100,32,128,256) 1.47 -> 0.71. AVX-512 keeps 8 x 3.
#if defined(__AVX512F__)
constexpr int RM = 8, NVM = 3;  // rows and vectors of the main register tile
#else
constexpr int RM = 6, NVM = 2;
#endif
// KC: 512 measured 0-6 % faster than 256 once W is packed (one k block for K = 512: no
// pass of C through L1 between blocks), 1024 slower for the large weight gradients
constexpr int KC = 512;        // k block
constexpr int MC = 16 * RM;    // row block

// GCC/Clang vector extension: one native SIMD register of R
template <class R> struct VecOf;
template <> struct VecOf<float> { typedef float type __attribute__((vector_size(kVecBytes))); };
template <> struct VecOf<double> { typedef double type __attribute__((vector_size(kVecBytes))); };
template <class R>
using Vec = typename VecOf<R>::type;

template <class R>
static inline Vec<R> vload(const R* p) { Vec<R> v; std::memcpy(&v, p, sizeof(v)); return v; }
template <class R>
static inline void vstore(R* p, Vec<R> v) { std::memcpy(p, &v, sizeof(v)); }

// C = C0 + A @ W on an RN x NV-vector tile; A(r, k) = P[r * sr + k * sk] (packed: sr = 1,
// sk = RN); C0 null: zeros
template <class R, int RN, int NV>
GL_INLINE void tile(const R* __restrict P, long sr, long sk, const R* __restrict W, long ldw,
                        const R* C0, long ld0, R* C, long ldc, int K) {
  constexpr int VL = kVecBytes / sizeof(R);
  Vec<R> acc[RN][NV];
  for (int r = 0; r < RN; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = C0 ? vload(C0 + r * ld0 + v * VL) : Vec<R>{};
  for (int k = 0; k < K; ++k) {
    const R* w = W + (long)k * ldw;
    Vec<R> wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = vload(w + v * VL);
    for (int r = 0; r < RN; ++r) {
      R a = P[r * sr + k * sk];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * wv[v];
    }
  }
  for (int r = 0; r < RN; ++r)
    for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * VL, acc[r][v]);
}

// C = C0 + [A1 | A2] @ W on an RN x NV-vector tile: k < K1 from A1 (row stride s1), then K2
// more from A2 (row stride s2), W a packed panel [K1 + K2][NV vectors]; C0 null: zeros. The
// sums run in the order of two tile() calls, the second starting from what the first wrote.
// Its k loop repeats tile()'s: sharing one helper (accumulators passed by reference)
// measured 1.5-2 % slower at T = 100, B = 32, H = 256.
template <class R, int RN, int NV>
GL_INLINE void tile2(const R* __restrict A1, long s1, int K1, const R* __restrict A2, long s2,
                     int K2, const R* __restrict W, const R* C0, long ld0, R* C, long ldc) {
  constexpr int VL = kVecBytes / sizeof(R);
  constexpr long ldw = NV * VL;
  Vec<R> acc[RN][NV];
  for (int r = 0; r < RN; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = C0 ? vload(C0 + r * ld0 + v * VL) : Vec<R>{};
  auto run = [&](const R* __restrict A, long sa, int K, const R* __restrict Wk) {
    for (int k = 0; k < K; ++k) {
      const R* w = Wk + (long)k * ldw;
      Vec<R> wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = vload(w + v * VL);
      for (int r = 0; r < RN; ++r) {
        R a = A[r * sa + k];
        for (int v = 0; v < NV; ++v) acc[r][v] += a * wv[v];
      }
    }
  };
  run(A1, s1, K1, W);
  run(A2, s2, K2, W + (long)K1 * ldw);
  for (int r = 0; r < RN; ++r)
    for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * VL, acc[r][v]);
}

// the row tiles of a block of ``rows``: RM rows while they last, then 4, 2, 1
template <class F>
GL_INLINE void row_tiles(int rows, F&& f) {
  int r = 0;
  for (; r + RM <= rows; r += RM) f(r, std::integral_constant<int, RM>());
  for (; r + 4 <= rows; r += 4) f(r, std::integral_constant<int, 4>());
  if (r + 2 <= rows) { f(r, std::integral_constant<int, 2>()); r += 2; }
  if (r < rows) f(r, std::integral_constant<int, 1>());
}

// Rows [m0, m0 + rows) and k [k0, k0 + kn) of A (not transposed) whose rows come in groups
// of grp rows, group g starting at A + g * ldg (the row block of one thread across the time
// steps of a chunk of x [T,B,I]), gathered into P [rows, kn]
template <class R>
static void gather_rows(const R* A, long lda, int m0, int rows, int k0, int kn, R* P, int grp,
                        long ldg) {
  for (int i = 0; i < rows; ++i) {
    const long m = m0 + i;
    std::memcpy(P + (long)i * kn, A + (m / grp) * ldg + (m % grp) * lda + k0, kn * sizeof(R));
  }
}

// A block as the tiles read it: A(r, k) = P[r * sr + k * sk]
struct ABlock {
  const void* P;
  long sr, sk;
};

// every row tile of the block on the column panel [j0, j0 + NV vectors); Wj: the panel's
// first column of W (row stride ldw)
template <class R, int NV>
GL_INLINE void panel(const ABlock& a, const R* Wj, long ldw, const R* C0, long ld0, R* C,
                         long ldc, int rows, int K, int j0) {
  const R* P = static_cast<const R*>(a.P);
  row_tiles(rows, [&](int r, auto rn_c) {
    constexpr int RN = decltype(rn_c)::value;
    const R* C0r = C0 ? C0 + r * ld0 + j0 : nullptr;
    tile<R, RN, NV>(P + r * a.sr, a.sr, a.sk, Wj, ldw, C0r, ld0, C + r * ldc + j0, ldc, K);
  });
}

// The column panels of a GEMM with N columns, in order: f(j0, NV) for a panel of NV vectors
// at column j0, then tail(j0) for the last < 1 vector of columns. ``few`` (fewer than 4 rows):
// wide panels first, which keep enough independent FMA chains in flight. A lone 1-vector
// remainder (slow: 8 accumulators) is avoided: 3 + 1 vectors run as 2 + 2.
template <class R, class F, class Tail>
GL_INLINE void for_panels(int N, bool few, F&& f, Tail&& tail) {
  constexpr int VL = kVecBytes / (int)sizeof(R);
  int j0 = 0;
  if (few) {
    for (; j0 + 8 * VL <= N; j0 += 8 * VL) f(j0, std::integral_constant<int, 8>());
    for (; j0 + 4 * VL <= N; j0 += 4 * VL) f(j0, std::integral_constant<int, 4>());
  }
  int nv = (N - j0) / VL;
  int full = nv / NVM;
  if (NVM == 3 && nv % 3 == 1 && full > 0) --full;
  for (int q = 0; q < full; ++q, j0 += NVM * VL) f(j0, std::integral_constant<int, NVM>());
  for (; j0 + 2 * VL <= N; j0 += 2 * VL) f(j0, std::integral_constant<int, 2>());
  for (; j0 + VL <= N; j0 += VL) f(j0, std::integral_constant<int, 1>());
  if (j0 < N) tail(j0);
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (the transpose, both row
// strides given), in 16 x 16 blocks: NumPy's copy of a transposed view walks one side with a
// large stride (~25 us for a 128 x 512 float matrix scalar, ~3 us with the AVX-512 register
// transpose)
template <class R>
static void transpose_block(const R* src, long lds, R* dst, long ldd, int nr, int nc) {
  for (int c = 0; c < nc; ++c)
    for (int r = 0; r < nr; ++r) dst[(long)c * ldd + r] = src[(long)r * lds + c];
}

#if defined(__AVX512F__)
// 16 x 16 floats through registers: 2 unpack stages, 2 128-bit lane shuffle stages
static inline void transpose16(const float* src, long lds, float* dst, long ldd) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]),
            c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int q = 0; q < 4; ++q) {
    t[q] = _mm512_shuffle_f32x4(r[q], r[4 + q], 0x88);
    t[4 + q] = _mm512_shuffle_f32x4(r[q], r[4 + q], 0xdd);
    t[8 + q] = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0x88);
    t[12 + q] = _mm512_shuffle_f32x4(r[8 + q], r[12 + q], 0xdd);
  }
  for (int q = 0; q < 4; ++q) {
    r[q] = _mm512_shuffle_f32x4(t[q], t[8 + q], 0x88);
    r[8 + q] = _mm512_shuffle_f32x4(t[q], t[8 + q], 0xdd);
    r[4 + q] = _mm512_shuffle_f32x4(t[4 + q], t[12 + q], 0x88);
    r[12 + q] = _mm512_shuffle_f32x4(t[4 + q], t[12 + q], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ldd, r[i]);
}
#endif

template <class R>
static void transpose(int rows, int cols, const R* src, long lds, R* dst, long ldd) {
  constexpr int TB = 16;
  for (int c0 = 0; c0 < cols; c0 += TB)  // dst row strips outer: 16 sequential write streams
    for (int r0 = 0; r0 < rows; r0 += TB) {
      const int nr = std::min(TB, rows - r0), nc = std::min(TB, cols - c0);
      const R* s = src + (long)r0 * lds + c0;
      R* d = dst + (long)c0 * ldd + r0;
#if defined(__AVX512F__)
      if (std::is_same<R, float>::value && nr == TB && nc == TB) {
        transpose16(reinterpret_cast<const float*>(s), lds, reinterpret_cast<float*>(d), ldd);
        continue;
      }
#endif
      transpose_block<R>(s, lds, d, ldd, nr, nc);
    }
}

// W [K, N] packed in the column panels of for_panels(N, few): the panel at column j0 of
// width w (NV vectors, or N - j0 for the tail) is a contiguous [K][w] block at P + j0 * K.
// The tiles then stream W from consecutive cache lines: read in place, its rows are
// N elements apart (8 KB at N = 2048), every k of a panel falls into the same L1 set and
// the panel no longer stays in L1 between the row tiles that reuse it (measured 5-15 %
// faster GEMMs). The sums are the same, in the same order: packing changes no bit.
template <class R>
struct WPack {
  const R* P;
  int K, N;
  bool few;
};

// pack W (row stride ldw) into P [K * N]: column j of the packed matrix is column
// (j / segw) * segstride + j % segw of W (segw = N: W's first N columns; the LSTM's unit
// split packs 4 gate slices of nj units each, segw = nj, segstride = H). ``trans``: W is
// given as stored by the model, W^T [N, K] (row stride ldw; column j of W is its row j), and
// packing transposes it, which saves a transposed copy per call.
template <class R>
static WPack<R> pack_w(const R* W, long ldw, int K, int N, bool few, R* P, int segw = 0,
                       long segstride = 0, bool trans = false) {
  if (segw <= 0) segw = N;
  auto copy = [&](int j0, int w) {
    R* dst = P + (long)j0 * K;
    for (int jj = 0; jj < w;) {  // runs of columns within one segment
      const int j = j0 + jj, seg = j / segw, off = j % segw;
      const int run = std::min(w - jj, segw - off);
      const long col = (long)seg * segstride + off;
      if (trans)
        transpose<R>(run, K, W + col * ldw, ldw, dst + jj, w);
      else
        for (int k = 0; k < K; ++k)
          std::memcpy(dst + (long)k * w + jj, W + col + (long)k * ldw, run * sizeof(R));
      jj += run;
    }
  };
  constexpr int VL = kVecBytes / (int)sizeof(R);
  for_panels<R>(N, few, [&](int j0, auto nv_c) { copy(j0, decltype(nv_c)::value * VL); },
                [&](int j0) { copy(j0, N - j0); });
  return WPack<R>{P, K, N, few};
}

// A buffer of at least n elements: per thread and kept between calls (slot: which of the
// thread's buffers) up to kKeepBytes, above that ``own`` (the caller's, freed on return). A
// fresh block of more than glibc's mmap threshold costs page faults on every call (~30 us
// for 256 KB, a tenth of a B = 1 forward); a kept one of the largest weights would hold
// memory forever (64 MB for H = 2048). 16 MB: the float weights up to H = 1024.
constexpr size_t kKeepBytes = 16u << 20;
template <class R, int slot>
static R* scratch(size_t n, std::vector<R>& own) {
  if (n * sizeof(R) > kKeepBytes) {
    own.resize(n);
    return own.data();
  }
  thread_local std::vector<R> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

template <class R>
static R* pack_buffer() {
  thread_local std::vector<R> buf;  // MC x KC, per thread, grown once
  if (buf.size() < (size_t)MC * KC) buf.resize((size_t)MC * KC);
  return buf.data();
}

// Weights reused by many GEMM rows are packed first (pack_w): a forward loop's weights always
// (they come as the model stores them, transposed: packing is the transposed copy the loop
// needs anyway; small calls measured 7-20 % faster than a separate transpose read in place),
// a backward loop's once per call when T * B reaches kPackMinRows (B < 4: the wide panels of
// few rows gain most, 11 % at T = 20, B = 1) or kPackMinRowsWide (T = 10, B = 8: 10 % slower
// packed, T = 10, B = 16 even); below these the copy costs more than it saves
constexpr long kPackMinRows = 16, kPackMinRowsWide = 128;

// C = C0 + A @ W in the time loops, W [K, N] row-major (row stride ldw) or packed (wp; W, ldw
// unused). Kept by measurement against one BLAS call per step (scipy-openblas32, 1 thread,
// best of 200 calls, 2-core AVX-512 Xeon; rows = a thread's batch rows): the LSTM forward
// step [x_t | h] @ [W_ih^T; W_hh^T] hand vs BLAS 5.9 vs 7.6 us (rows 1, I = H = 128), 159 vs
// 296 (32, 128, 256), 1883 vs 2448 (64, 512, 512), 12.9 vs 51.7 (8, 128, 128), 3.2 vs 7.3
// (32, 32, 32); the backward step dG @ W_hh 2.9 vs 3.4, 106 vs 166, 952 vs 1103, 6.7 vs 8.8,
// 1.6 vs 1.8 us at the same shapes: 12-400 % faster everywhere but the backward of 4 rows at
// H = 128 (4.7 vs 4.4 us, BLAS 5 % faster, within the noise; the same code serves the rows
// where it wins). The whole-sequence GEMMs are the BLAS's (gemm_* below).
template <class R>
static void gemm(const R* A, long lda, const R* W, long ldw, const R* C0, long ld0,
                 R* C, long ldc, int M, int K, int N, int grp = 0, long ldg = 0,
                 const WPack<R>* wp = nullptr) {
  constexpr int VL = kVecBytes / (int)sizeof(R);
  if (K <= 0) {  // nothing to add: C = C0
    for (int r = 0; r < M; ++r) {
      R* c = C + (long)r * ldc;
      if (!C0) std::fill(c, c + N, R(0));
      else if (C0 != C) std::copy(C0 + r * ld0, C0 + r * ld0 + N, c);
    }
    return;
  }
  // op(A) in place, but rows in groups (grp) packed block by block
  const bool in_place = grp == 0;
  R* P = in_place ? nullptr : pack_buffer<R>();
  const bool few = wp ? wp->few : M < 4;
  for (int k0 = 0; k0 < K; k0 += KC) {
    const int kn = std::min(KC, K - k0);
    const R* Wk = W + (long)k0 * ldw;
    const WPack<R>* pk = wp;
    const int kp = k0;  // k0 within the packed matrix
    // column panel at j0 of width w: its first column of W and row stride
    auto wcol = [&](int j0, int w, long& lw) -> const R* {
      if (!pk) { lw = ldw; return Wk + j0; }
      lw = w;
      return pk->P + (long)j0 * pk->K + (long)kp * w;
    };
    for (int m0 = 0; m0 < M; m0 += MC) {
      const int rows = std::min(MC, M - m0);
      ABlock ab;
      if (in_place) {
        ab = ABlock{A + m0 * lda + k0, lda, 1};
      } else {
        gather_rows<R>(A, lda, m0, rows, k0, kn, P, grp, ldg);
        ab = ABlock{P, kn, 1};
      }
      // the first k block starts from C0, later ones add to what it wrote
      const R* Ck = k0 == 0 ? (C0 ? C0 + m0 * ld0 : nullptr) : C + (long)m0 * ldc;
      const long ldk = k0 == 0 ? ld0 : ldc;
      R* Cm = C + (long)m0 * ldc;
      for_panels<R>(N, pk ? few : rows < 4, [&](int j0, auto nv_c) {
        constexpr int NV = decltype(nv_c)::value;
        long lw;
        const R* Wj = wcol(j0, NV * VL, lw);
        panel<R, NV>(ab, Wj, lw, Ck, ldk, Cm, ldc, rows, kn, j0);
      }, [&](int j0) {  // the last < 1 vector of columns
        long lw;
        const R* Wj = wcol(j0, N - j0, lw);
        row_tiles(rows, [&](int r, auto rn_c) {
          constexpr int RN = decltype(rn_c)::value;
          for (int i = 0; i < RN; ++i) {
            R* c = Cm + (long)(r + i) * ldc;
            const R* c0 = Ck ? Ck + (r + i) * ldk : nullptr;
            for (int j = j0; j < N; ++j) {
              R s = c0 ? c0[j] : R(0);
              for (int k = 0; k < kn; ++k) {
                R a = static_cast<const R*>(ab.P)[(r + i) * ab.sr + k * ab.sk];
                s += a * Wj[(long)k * lw + (j - j0)];
              }
              c[j] = s;
            }
          }
        });
      });
    }
  }
}

// C[rows, N] = C0 + A[rows, K] @ W[K, N]; C0 = C (ld0 = ldc) accumulates in place
// (wp: W packed; W, ldw unused)
template <class R>
static inline void gemm_add(const R* A, long lda, const R* W, long ldw, const R* C0, long ld0,
                            R* C, long ldc, int rows, int K, int N,
                            const WPack<R>* wp = nullptr) {
  gemm<R>(A, lda, W, ldw, C0, ld0, C, ldc, rows, K, N, 0, 0, wp);
}

template <class R>
static inline void gemm_acc(const R* A, long lda, const R* W, long ldw, R* C, long ldc, int rows,
                            int K, int N, const WPack<R>* wp = nullptr) {
  gemm<R>(A, lda, W, ldw, C, ldc, C, ldc, rows, K, N, 0, 0, wp);
}

// The weights of a time loop of T steps x B rows, packed once per call (into scratch slot
// ``slot``) when the loop reuses them enough; get() null: read in place
template <class R>
struct LoopWeights {
  WPack<R> wp{};
  std::vector<R> own;
  const WPack<R>* get() const { return wp.P ? &wp : nullptr; }
};

// always: pack however short the loop (the LSTM's unit split, which needs its gate slices
// side by side anyway; weights given transposed, ``trans``, which cannot be read in place)
template <class R, int slot>
static void pack_loop_weights(LoopWeights<R>& lw, const R* W, long ldw, int K, int N, int T,
                              int B, int segw = 0, long segstride = 0, bool always = false,
                              bool trans = false) {
  if (K <= 0 || N <= 0) return;
  if (!always && !trans && (long)T * B < (B < 4 ? kPackMinRows : kPackMinRowsWide)) return;
  lw.wp = pack_w<R>(W, ldw, K, N, B < 4, scratch<R, slot>((size_t)K * N, lw.own), segw,
                    segstride, trans);
}

// ---- thread split ------------------------------------------------------------------------
// GNU OpenMP hangs in a parallel region of a fork()ed child whose parent had used OpenMP
// threads (multiprocessing's default start method on Linux): a forked child runs single
// threaded, as PyTorch does.
std::atomic<bool> g_forked{false};
std::atomic<int> g_last_threads{0};  // threads of the latest split (tests read it)
__attribute__((constructor)) void gl_register_atfork() {
  pthread_atfork(nullptr, nullptr, [] { g_forked.store(true); });
}

// Contiguous row blocks of about B / nthreads rows, a multiple of 4 (at least 4 rows each, so
// that every thread still runs register tiles of several rows), and at least kMinMacs
// multiply-adds of GEMM work per thread (``macs``: the whole call's): a parallel region costs
// microseconds on a quiet machine and a scheduler time slice (milliseconds) on an
// oversubscribed one, which small calls (H = 32: ~0.1 ms in all) cannot amortise.
// Each thread packs the loop's weights for itself, into its own kept scratch: one copy packed
// by the calling thread and read by all was rewritten on the next call while the other
// cores still held its lines, and the pack took 190 instead of 35 us (T = 1, B = 32,
// H = 256, 2 threads: 277 -> 90 us a call).
constexpr int kUnitsMaxB = 8;  // the LSTM forward's split over units: up to 8 batch rows
constexpr double kMinMacs = 4e6;
constexpr double kMinMacsUnits = 1e6;  // the split over hidden units (below): no region per call is cheaper
static int requested_threads(int nthreads) {
#ifdef _OPENMP
  int nt = nthreads > 0 ? nthreads : omp_get_max_threads();
#else
  int nt = 1;
#endif
  return g_forked.load(std::memory_order_relaxed) ? 1 : nt;
}

template <class F>
static void for_row_blocks(int B, double macs, int nthreads, F&& body) {
  int nt = requested_threads(nthreads);
  constexpr int TG = 4;
  nt = std::max(1, std::min(nt, B / TG));
  nt = std::max(1, std::min(nt, (int)std::min(1e6, macs / kMinMacs)));
  g_last_threads.store(nt, std::memory_order_relaxed);
  if (nt == 1) {
    body(0, B);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    int id = omp_get_thread_num(), n = omp_get_num_threads();
#else
    int id = 0, n = 1;
#endif
    int per = ((B + n - 1) / n + TG - 1) / TG * TG;
    int b0 = std::min(B, id * per), b1 = std::min(B, b0 + per);
    if (b0 < b1) body(b0, b1);
  }
}

// slots: state slots of S / C, T + 1 (the whole history) or 2 (the inference ring: state i
// in slot i % 2)
struct Steps {
  int T, reverse, slots;
  inline int t(int s) const { return reverse ? T - 1 - s : s; }
  inline int prev(int t) const { return (reverse ? t + 1 : t) % slots; }
  inline int nxt(int t) const { return (reverse ? t : t + 1) % slots; }
};

// ---- the cell headers' math policy, and their inputs here --------------------------------
// The loops below run the pointwise step of kernels/cells/<cell>.cuh (the same code as the
// CUDA kernels) with this file's vectorisable exp/sigmoid/tanh. The option flags are template
// constants (FL), so the header's branches on them fold away.
struct CpuMath {
  template <class R>
  static inline R sigmoid(R x) { return vsigmoid<R>(x); }
  template <class R>
  static inline R tanh(R x) { return vtanh<R>(x); }
};

// The policy of the loops whose recurrent GEMM starts from gx (LSTM, RNN): ``a`` already holds
// gx + gh, which the header takes as it is (gl_preact; the loops pass ``a`` for gx and gh)
struct CpuMathPresummed : CpuMath {
  static constexpr bool presummed = true;
};

// ---- LSTM ---------------------------------------------------------------------------------
// One time step of the LSTM pointwise forward for batch row b and units [j0, j1): ``a`` the
// gate pre-activations of the row (gate q of unit j at a[q * gs + j - ja]). The inference
// path (gates_ts = 0) stores the gates too, into its one scratch slot: skipping the stores
// (a second instantiation chosen per row) measured 7 % slower at H = 32, none faster.
template <class R, bool pp, bool nf>
static inline void lstm_point(int B, int H, int t, int p, int n, int b, int j0, int j1,
                              const R* a, long gs, int ja, const int* L, R* S, R* C,
                              const R* peep, R* gates, long gates_ts, R* Y) {
  constexpr int FL = (pp ? LSTM_PEEPHOLE : 0) | (nf ? LSTM_NO_FORGET : 0);
  const int G = 4 * H;
  const R* cp = C + ((long)p * B + b) * H;
  const R* hp = S + ((long)p * B + b) * H;
  R* cn = C + ((long)n * B + b) * H;
  R* hn = S + ((long)n * B + b) * H;
  R* y = Y + ((long)t * B + b) * H;
  R* gt = gates + (long)t * gates_ts + (long)b * G;
  const R* a0 = a - ja;
  const bool act = t < L[b];
#pragma omp simd
  for (int j = j0; j < j1; ++j) {
    const R c0 = cp[j];
    R c, h;
    LstmCell::forward<CpuMathPresummed, R>(a0 + j, a0 + j, gs, peep + j, H, c0, hp[j], FL,
                                           gt + j, H, c, h);
    cn[j] = act ? c : c0;
    hn[j] = act ? h : hp[j];
    y[j] = act ? h : R(0);
  }
}

// [W1^T; W2^T] packed in the panels of for_panels(N, false): W1 [N, K1] and W2 [N, K2] as the
// model stores them (W_ih and W_hh of an LSTM), the packed matrix [K1 + K2, N]
template <class R>
static WPack<R> pack_w_cat(const R* W1, int K1, const R* W2, int K2, int N, R* P) {
  const int K = K1 + K2;
  auto copy = [&](int j0, int w) {
    R* dst = P + (long)j0 * K;
    transpose<R>(w, K1, W1 + (long)j0 * K1, K1, dst, w);
    transpose<R>(w, K2, W2 + (long)j0 * K2, K2, dst + (long)K1 * w, w);
  };
  constexpr int VL = kVecBytes / (int)sizeof(R);
  for_panels<R>(N, false, [&](int j0, auto nv_c) { copy(j0, decltype(nv_c)::value * VL); },
                [&](int j0) { copy(j0, N - j0); });
  return WPack<R>{P, K, N, false};
}

// C[rows, N] = c0 + [A1 | A2] @ W (W packed by pack_w_cat, K1 + K2 <= 2 KC; c0 one row, the
// bias, or null), A1 and A2 of row strides s1 = K1 and s2 = K2: the same sums in the same
// order as gemm() of A1 from c0 followed by gemm_add() of A2
template <class R>
static void gemm_cat(const R* A1, int K1, const R* A2, int K2, const WPack<R>& wp, const R* c0,
                     R* C, long ldc, int rows) {
  constexpr int VL = kVecBytes / (int)sizeof(R);
  const int N = wp.N, K = wp.K;
  for_panels<R>(N, false, [&](int j0, auto nv_c) {
    constexpr int NV = decltype(nv_c)::value;
    const R* Wj = wp.P + (long)j0 * K;
    row_tiles(rows, [&](int r, auto rn_c) {
      constexpr int RN = decltype(rn_c)::value;
      tile2<R, RN, NV>(A1 + (long)r * K1, K1, K1, A2 + (long)r * K2, K2, K2, Wj,
                       c0 ? c0 + j0 : nullptr, 0, C + (long)r * ldc + j0, ldc);
    });
  }, [&](int j0) {  // the last < 1 vector of columns
    const int w = N - j0;
    const R* Wj = wp.P + (long)j0 * K;
    for (int r = 0; r < rows; ++r)
      for (int j = j0; j < N; ++j) {
        R sum = c0 ? c0[j] : R(0);
        for (int k = 0; k < K1; ++k) sum += A1[(long)r * K1 + k] * Wj[(long)k * w + (j - j0)];
        for (int k = 0; k < K2; ++k)
          sum += A2[(long)r * K2 + k] * Wj[(long)(K1 + k) * w + (j - j0)];
        C[(long)r * ldc + j] = sum;
      }
  });
}

// The input of an LSTM forward: the projection gx [T,B,G] precomputed (bias folded), or null
// and then x [T,B,I] with W_ih [G,I] and the folded bias [G] (null: none), projected here
// a chunk of time steps at a time into a buffer that stays in L1/L2 (no [T,B,G] array: at
// B=64, H=512 that is 52 MB written and read again, and fresh pages on every call).
template <class R>
struct LstmInput {
  const R* gx;
  const R* x;
  const R* wih;
  const R* bias;
  int I;
};

// time steps per projection chunk for ``rows`` rows: about 256 KB of gates, at least 64 rows
// of GEMM (fewer make the projection's register tiles starve), at most T
constexpr long kChunkBytes = 256 << 10;
constexpr int kChunkRows = 64;
template <class R>
static int chunk_steps(int T, int rows, int G) {
  const long per_step = (long)rows * G * (long)sizeof(R);
  int c = (int)std::max<long>(1, kChunkBytes / std::max<long>(1, per_step));
  c = std::max(c, (kChunkRows + rows - 1) / rows);
  return std::max(1, std::min(c, T));
}

// Threads over hidden units, for few batch rows (B = 1..8: row blocks would leave a thread
// with a register tile of 1-4 rows re-streaming all of W_hh): thread k owns units
// [j0, j1) (whole vectors), computes the 4 gate slices of those units from the whole h_{t-1}
// and writes their h_t, c_t; one barrier per step publishes h_t. Every GEMM element sums in
// the same order as in the one-thread loop, so the bits do not depend on the split.
template <class R, bool pp, bool nf>
static bool lstm_forward_units(int T, int B, int H, const LstmInput<R>& in, const R* whh,
                               const int* L, int reverse, int slots, R* S, R* C,
                               const R* peep, R* gates,
                               long gates_ts, R* Y, int nthreads) {
#ifdef _OPENMP
  constexpr int VL = kVecBytes / (int)sizeof(R);
  int nt = requested_threads(nthreads);
  nt = std::min(nt, H / (2 * VL));  // at least 2 vectors of units each
  const double macs = (double)T * B * 4 * H * (H + (in.gx ? 0 : in.I));
  if (nt < 2 || B > kUnitsMaxB || macs < kMinMacsUnits * nt) return false;
  g_last_threads.store(nt, std::memory_order_relaxed);
  const int G = 4 * H;
  const int c = in.gx ? 1 : chunk_steps<R>(T, B, G);
  Steps st{T, reverse, slots};
#pragma omp parallel num_threads(nt)
  {
    const int id = omp_get_thread_num(), n = omp_get_num_threads();
    const int vecs = (H + VL - 1) / VL, per = (vecs + n - 1) / n;
    const int j0 = std::min(H, id * per * VL), j1 = std::min(H, j0 + per * VL);
    const int nj = j1 - j0, nw = 4 * nj;
    const long slot = (long)B * nw;  // one time step of this thread's gates
    std::vector<R> abuf((size_t)c * std::max(slot, 1L));
    // this thread's columns of the weights and the bias: the 4 gate slices of its units side
    // by side (packed; the bias, one row, packs into that row), one GEMM of 4 * nj columns
    LoopWeights<R> ph, pi, pb;
    if (nj > 0)
      pack_loop_weights<R, 2>(ph, whh + (long)j0 * H, H, H, nw, T, B, nj, H, true, true);
    if (nj > 0 && !in.gx)
      pack_loop_weights<R, 3>(pi, in.wih + (long)j0 * in.I, in.I, in.I, nw, T, B, nj, H, true,
                              true);
    if (nj > 0 && !in.gx && in.bias) pack_loop_weights<R, 4>(pb, in.bias + j0, 0, 1, nw, T, B, nj, H, true);
    const WPack<R>*whp = ph.get(), *wip = pi.get();
    for (int s0 = 0; s0 < T; s0 += c) {
      const int cn = std::min(c, T - s0);
      const int tlo = reverse ? T - s0 - cn : s0;  // the chunk's time steps: [tlo, tlo + cn)
      if (nj > 0 && !in.gx)
        gemm_add<R>(in.x + (long)tlo * B * in.I, in.I, nullptr, 0, pb.wp.P, 0, abuf.data(), nw,
                    cn * B, in.I, nw, wip);
      for (int s = s0; s < s0 + cn; ++s) {
        const int t = st.t(s), p = st.prev(t), nx = st.nxt(t);
        R* a = abuf.data() + (in.gx ? 0 : (long)(t - tlo) * slot);
        if (nj > 0) {
          if (in.gx)  // the step's precomputed projection as the GEMM's initial value
            for (int b = 0; b < B; ++b)
              for (int q = 0; q < 4; ++q)
                std::memcpy(a + (long)b * nw + q * nj, in.gx + ((long)t * B + b) * G + q * H + j0,
                            nj * sizeof(R));
          gemm_add<R>(S + (long)p * B * H, H, nullptr, 0, a, nw, a, nw, B, H, nw, whp);
          for (int b = 0; b < B; ++b)
            lstm_point<R, pp, nf>(B, H, t, p, nx, b, j0, j1, a + (long)b * nw, nj, j0, L, S, C,
                                  peep, gates, gates_ts, Y);
        }
#pragma omp barrier
      }
    }
  }
  return true;
#else
  return false;
#endif
}

template <class R, bool pp, bool nf>
static void lstm_forward(int T, int B, int H, const LstmInput<R>& in, const R* whh,
                         const int* L, int reverse, int slots, R* S, R* C,
                         const R* peep, R* gates,
                         long gates_ts, R* Y, int nthreads) {
  const int G = 4 * H;
  if (lstm_forward_units<R, pp, nf>(T, B, H, in, whh, L, reverse, slots, S, C, peep, gates,
                                    gates_ts, Y, nthreads))
    return;
  Steps st{T, reverse, slots};
  const double macs = (double)T * B * G * (H + (in.gx ? 0 : in.I));
  for_row_blocks(B, macs, nthreads, [&](int b0, int b1) {
    const int rows = b1 - b0;
    if (!in.gx && rows % RM == 0 && in.I <= KC && H <= KC) {
      // whole register tiles of rows: one GEMM per step of [x_t | h_{t-1}] with
      // [W_ih^T; W_hh^T] from the bias (the gates never leave the registers between the two
      // products; T = 100, B = 32, H = 256: 2-4 % faster, H = 32: 15 %); the chunked
      // projection below keeps its 8-row tiles for other row counts (B = 12: fused 15 %
      // slower) and B < 4 its wide panels (B = 1: 45 % slower fused)
      std::vector<R> own;
      const WPack<R> wp = pack_w_cat<R>(in.wih, in.I, whh, H, G,
                                        scratch<R, 2>((size_t)(in.I + H) * G, own));
      std::vector<R> abuf((size_t)rows * G);
      R* a = abuf.data();
      for (int s = 0; s < T; ++s) {
        const int t = st.t(s), p = st.prev(t), n = st.nxt(t);
        gemm_cat<R>(in.x + ((long)t * B + b0) * in.I, in.I, S + ((long)p * B + b0) * H, H, wp,
                    in.bias, a, G, rows);
        for (int b = b0; b < b1; ++b)
          lstm_point<R, pp, nf>(B, H, t, p, n, b, 0, H, a + (long)(b - b0) * G, H, 0, L, S, C,
                                peep, gates, gates_ts, Y);
      }
      return;
    }
    LoopWeights<R> ph, pi;  // packed (transposed) by each thread for itself (for_row_blocks)
    pack_loop_weights<R, 2>(ph, whh, H, H, G, T, B, 0, 0, false, true);
    if (!in.gx) pack_loop_weights<R, 3>(pi, in.wih, in.I, in.I, G, T, B, 0, 0, false, true);
    const WPack<R>*whp = ph.get(), *wip = pi.get();
    const int c = in.gx ? 1 : chunk_steps<R>(T, rows, G);
    const long slot = (long)rows * G;
    std::vector<R> abuf((size_t)c * slot);
    for (int s0 = 0; s0 < T; s0 += c) {
      const int cn = std::min(c, T - s0);
      const int tlo = reverse ? T - s0 - cn : s0;
      if (!in.gx) {  // the chunk's input projection: one GEMM
        // rows b0..b1 of every step of the chunk: groups of ``rows`` rows, B * I apart
        gemm<R>(in.x + ((long)tlo * B + b0) * in.I, in.I, nullptr, 0, in.bias, 0,
                abuf.data(), G, cn * rows, in.I, G, rows == B ? 0 : rows, (long)B * in.I, wip);
      }
      for (int s = s0; s < s0 + cn; ++s) {
        const int t = st.t(s), p = st.prev(t), n = st.nxt(t);
        R* a = abuf.data() + (in.gx ? 0 : (long)(t - tlo) * slot);
        const R* c0 = in.gx ? in.gx + ((long)t * B + b0) * G : a;
        gemm_add<R>(S + ((long)p * B + b0) * H, H, nullptr, 0, c0, G, a, G, rows, H, G, whp);
        for (int b = b0; b < b1; ++b)
          lstm_point<R, pp, nf>(B, H, t, p, n, b, 0, H, a + (long)(b - b0) * G, H, 0, L, S, C,
                                peep, gates, gates_ts, Y);
      }
    }
  });
}

// db (null: not asked for) [ceil(T / window), G]: the bias gradient, per window of ``window``
// steps (window i: steps [i * window, (i + 1) * window), the engine's windows, which it adds
// up in its own order) the sum of dG over the window's steps and rows, accumulated while each
// step's dG is in L1 (NumPy's column sum of the [T*B, G] array after the loop read it back
// from memory: 2 % of a T = 1000, B = 8 training step). Row b sums its steps in processing
// order into its own row of rowsum [windows, B, G], then the rows add up in order
// b = 0..B-1: the bits depend neither on the thread split nor on where a call's steps start
// (a call over a window-aligned part of the sequence gives those windows' sums to the bit).
template <class R, bool pp, bool nf>
static void lstm_backward(int T, int B, int H, const R* whh, const int* L, int reverse,
                          const R* C, const R* peep, const R* gates, const R* dY, R* dh_io,
                          R* dc_io, R* dG, R* db, int window, int nthreads) {
  constexpr int FL = (pp ? LSTM_PEEPHOLE : 0) | (nf ? LSTM_NO_FORGET : 0);
  const int G = 4 * H;
  Steps st{T, reverse, T + 1};
  window = window > 0 ? window : std::max(T, 1);
  const int nwin = (T + window - 1) / window;
  std::vector<R> rowsum(db ? (size_t)nwin * B * G : 0, R(0));
  for_row_blocks(B, (double)T * B * G * H, nthreads, [&](int b0, int b1) {
    LoopWeights<R> pw;  // each thread its own copy (for_row_blocks)
    pack_loop_weights<R, 2>(pw, whh, H, G, H, T, B);
    const WPack<R>* wp = pw.get();
    for (int s = T - 1; s >= 0; --s) {
      const int t = st.t(s), p = st.prev(t), n = st.nxt(t);
      for (int b = b0; b < b1; ++b) {
        const R* gt = gates + ((long)t * B + b) * G;
        const R* cn = C + ((long)n * B + b) * H;
        const R* cp = C + ((long)p * B + b) * H;
        const R* dy = dY + ((long)t * B + b) * H;
        R* dh = dh_io + (long)b * H;
        R* dc = dc_io + (long)b * H;
        R* dg = dG + ((long)t * B + b) * G;
        const bool act = t < L[b];
        R* sb = db ? rowsum.data() + ((long)(t / window) * B + b) * G : nullptr;
        if (!act) {  // past the row's end: a zero gate gradient, dh and dc carried
          std::fill(dg, dg + G, R(0));
          continue;
        }
#pragma omp simd
        for (int j = 0; j < H; ++j) {
          R dhp;
          LstmCell::backward<CpuMath, R>(gt + j, H, peep + j, H, cn[j], cp[j], R(0), R(0),
                                         dh[j] + dy[j], dc[j], FL, dg + j, dg + j, H, dhp);
          dh[j] = dhp;
        }
        if (sb)  // (inactive steps add zeros: they skipped this)
#pragma omp simd
          for (int k = 0; k < G; ++k) sb[k] += dg[k];
      }
      gemm_acc<R>(dG + ((long)t * B + b0) * G, G, whh, H, dh_io + (long)b0 * H, H, b1 - b0, G, H,
                  wp);
    }
  });
  if (db) {
    for (int w = 0; w < nwin; ++w) {
      const R* rs = rowsum.data() + (long)w * B * G;
      R* dw = db + (long)w * G;
      std::copy(rs, rs + G, dw);
      for (int b = 1; b < B; ++b)
        for (int k = 0; k < G; ++k) dw[k] += rs[(long)b * G + k];
    }
  }
}

// flags -> the instantiation with the peephole / no-forget-gate branches resolved at compile
// time (a branch inside the loop body keeps the compiler from vectorising it)
#define GL_LSTM_DISPATCH(FN, ...)                                                  \
  switch (flags & (LSTM_PEEPHOLE | LSTM_NO_FORGET)) {                               \
    case 0: FN<R, false, false>(__VA_ARGS__); break;                                 \
    case LSTM_NO_FORGET: FN<R, false, true>(__VA_ARGS__); break;                     \
    case LSTM_PEEPHOLE: FN<R, true, false>(__VA_ARGS__); break;                      \
    default: FN<R, true, true>(__VA_ARGS__); break;                                  \
  }

template <class R>
static void lstm_forward_any(int T, int B, int H, const LstmInput<R>& in, const R* whh,
                             const int* L, int reverse, int slots, R* S, R* C,
                             const R* peep, R* gates,
                             long gates_ts, R* Y, int flags, int nthreads) {
  GL_LSTM_DISPATCH(lstm_forward, T, B, H, in, whh, L, reverse, slots, S, C, peep, gates,
                   gates_ts, Y, nthreads)
}

template <class R>
static void lstm_backward_any(int T, int B, int H, const R* whh, const int* L, int reverse,
                              const R* C, const R* peep, const R* gates, const R* dY, R* dh_io,
                              R* dc_io, R* dG, R* db, int window, int flags, int nthreads) {
  GL_LSTM_DISPATCH(lstm_backward, T, B, H, whh, L, reverse, C, peep, gates, dY, dh_io, dc_io, dG,
                   db, window, nthreads)
}

// ---- GRU ----------------------------------------------------------------------------------
template <class R>
static void gru_forward(int T, int B, int H, const R* gx, const R* whh, const R* b_hn,
                        const int* L, int reverse, int slots, R* S, R* gates, long gates_ts,
                        R* Y,
                        int nthreads) {
  const int G = 3 * H;
  Steps st{T, reverse, slots};
  for_row_blocks(B, (double)T * B * G * H, nthreads, [&](int b0, int b1) {
    LoopWeights<R> pw;  // each thread its own copy (for_row_blocks)
    pack_loop_weights<R, 2>(pw, whh, H, H, G, T, B, 0, 0, false, true);
    const WPack<R>* wp = pw.get();
    const int rows = b1 - b0;
    std::vector<R> abuf((size_t)rows * G);
    R* gh = abuf.data();
    for (int s = 0; s < T; ++s) {
      const int t = st.t(s), p = st.prev(t), n = st.nxt(t);
      gemm_add<R>(S + ((long)p * B + b0) * H, H, nullptr, 0, nullptr, 0, gh, G, rows, H, G, wp);
      for (int b = b0; b < b1; ++b) {
        const R* ghr = gh + (long)(b - b0) * G;
        const R* x = gx + ((long)t * B + b) * G;
        const R* hp = S + ((long)p * B + b) * H;
        R* hnx = S + ((long)n * B + b) * H;
        R* y = Y + ((long)t * B + b) * H;
        R* gt = gates + (long)t * gates_ts + (long)b * 4 * H;
        const bool act = t < L[b];
#pragma omp simd
        for (int j = 0; j < H; ++j) {
          R c = R(0), h;
          GruCell::forward<CpuMath, R>(x + j, ghr + j, H, b_hn + j, H, R(0), hp[j], 0, gt + j, H,
                                       c, h);
          hnx[j] = act ? h : hp[j];
          y[j] = act ? h : R(0);
        }
      }
    }
  });
}

template <class R>
static void gru_backward(int T, int B, int H, const R* whh, const int* L, int reverse,
                         const R* S, const R* gates, const R* dY, R* dh_io, R* dGx, R* dGh,
                         int nthreads) {
  const int G = 3 * H;
  Steps st{T, reverse, T + 1};
  for_row_blocks(B, (double)T * B * G * H, nthreads, [&](int b0, int b1) {
    LoopWeights<R> pw;  // each thread its own copy (for_row_blocks)
    pack_loop_weights<R, 2>(pw, whh, H, G, H, T, B);
    const WPack<R>* wp = pw.get();
    for (int s = T - 1; s >= 0; --s) {
      const int t = st.t(s), p = st.prev(t);
      for (int b = b0; b < b1; ++b) {
        const R* gt = gates + ((long)t * B + b) * 4 * H;
        const R* hp = S + ((long)p * B + b) * H;
        const R* dy = dY + ((long)t * B + b) * H;
        R* dh = dh_io + (long)b * H;
        R* dx = dGx + ((long)t * B + b) * G;
        R* dhh = dGh + ((long)t * B + b) * G;
        const bool act = t < L[b];
        if (!act) {  // past the row's end: zero gate gradients, dh carried
          std::fill(dx, dx + G, R(0));
          std::fill(dhh, dhh + G, R(0));
          continue;
        }
#pragma omp simd
        for (int j = 0; j < H; ++j) {
          R c = R(0), dhp;
          GruCell::backward<CpuMath, R>(gt + j, H, (const R*)nullptr, 0, R(0), R(0), R(0), hp[j],
                                        dh[j] + dy[j], c, 0, dx + j, dhh + j, H, dhp);
          dh[j] = dhp;
        }
      }
      gemm_acc<R>(dGh + ((long)t * B + b0) * G, G, whh, H, dh_io + (long)b0 * H, H, b1 - b0, G, H,
                  wp);
    }
  });
}

// ---- simple RNN ---------------------------------------------------------------------------
template <class R, int FL>
static void rnn_forward(int T, int B, int H, const R* gx, const R* whh, const int* L,
                        int reverse, int slots, R* S, R* Y, int nthreads) {
  Steps st{T, reverse, slots};
  for_row_blocks(B, (double)T * B * H * H, nthreads, [&](int b0, int b1) {
    LoopWeights<R> pw;  // each thread its own copy (for_row_blocks)
    pack_loop_weights<R, 2>(pw, whh, H, H, H, T, B, 0, 0, false, true);
    const WPack<R>* wp = pw.get();
    const int rows = b1 - b0;
    std::vector<R> abuf((size_t)rows * H);
    R* a = abuf.data();
    for (int s = 0; s < T; ++s) {
      const int t = st.t(s), p = st.prev(t), n = st.nxt(t);
      gemm_add<R>(S + ((long)p * B + b0) * H, H, nullptr, 0, gx + ((long)t * B + b0) * H, H, a, H,
                  rows, H, H, wp);
      for (int b = b0; b < b1; ++b) {
        const R* ar = a + (long)(b - b0) * H;
        const R* hp = S + ((long)p * B + b) * H;
        R* hnx = S + ((long)n * B + b) * H;
        R* y = Y + ((long)t * B + b) * H;
        const bool act = t < L[b];
#pragma omp simd
        for (int j = 0; j < H; ++j) {
          R c = R(0), h;  // NaN stays NaN (the header's relu)
          RnnCell::forward<CpuMathPresummed, R>(ar + j, ar + j, 1, (const R*)nullptr, 0, R(0),
                                                hp[j], FL, (R*)nullptr, 0, c, h);
          hnx[j] = act ? h : hp[j];
          y[j] = act ? h : R(0);
        }
      }
    }
  });
}

template <class R, int FL>
static void rnn_backward(int T, int B, int H, const R* whh, const int* L, int reverse,
                         const R* S, const R* dY, R* dh_io, R* dG, int nthreads) {
  Steps st{T, reverse, T + 1};
  for_row_blocks(B, (double)T * B * H * H, nthreads, [&](int b0, int b1) {
    LoopWeights<R> pw;  // each thread its own copy (for_row_blocks)
    pack_loop_weights<R, 2>(pw, whh, H, H, H, T, B);
    const WPack<R>* wp = pw.get();
    for (int s = T - 1; s >= 0; --s) {
      const int t = st.t(s), n = st.nxt(t);
      for (int b = b0; b < b1; ++b) {
        const R* h = S + ((long)n * B + b) * H;
        const R* dy = dY + ((long)t * B + b) * H;
        R* dh = dh_io + (long)b * H;
        R* dg = dG + ((long)t * B + b) * H;
        const bool act = t < L[b];
        if (!act) {  // past the row's end: a zero gate gradient, dh carried
          std::fill(dg, dg + H, R(0));
          continue;
        }
#pragma omp simd
        for (int j = 0; j < H; ++j) {
          R c = R(0), dhp;  // torch's gradient at NaN (the header's)
          RnnCell::backward<CpuMath, R>((const R*)nullptr, 0, (const R*)nullptr, 0, R(0), R(0),
                                        h[j], R(0), dh[j] + dy[j], c, FL, dg + j, dg + j, 1,
                                        dhp);
          dh[j] = dhp;
        }
      }
      gemm_acc<R>(dG + ((long)t * B + b0) * H, H, whh, H, dh_io + (long)b0 * H, H, b1 - b0, H, H,
                  wp);
    }
  });
}

// ---- any cell, from its header alone ------------------------------------------------------
// The loops of a cell that brings only its header (kernels/cells/<cell>.cuh; e.g. CIFG,
// IndRNN): the input projection gx [T,B,G*H] precomputed with the folded bias, per step the
// recurrent product gh = h_{t-1} W_hh^T (DENSE cells) and the header's pointwise step per unit;
// backward the header's step and dL/dh_{t-1} = its direct part + dGh W_hh (DENSE). Row blocks
// over threads as above (the recurrence never mixes rows). The option flags are a run-time
// argument here (the LSTM/GRU/RNN loops above make them template constants).
// konst [NCONST, H] the cell's constants (null with NCONST = 0); C / dc null without HAS_C;
// gates [T,B,SAVED*H] (time stride gates_ts; null with SAVED = 0); dGh [T,B,G*H] only with
// SPLIT_DGH (else dGx serves both).
template <class Cell, class R>
static void cell_forward(int T, int B, int H, const R* gx, const R* whh, const R* konst,
                         const int* L, int reverse, int slots, R* S, R* C, R* gates,
                         long gates_ts, R* Y, int flags, int nthreads) {
  const int G = Cell::G * H, W = Cell::SAVED * H;
  Steps st{T, reverse, slots};
  for_row_blocks(B, (double)T * B * G * (Cell::DENSE ? H : 1), nthreads, [&](int b0, int b1) {
    LoopWeights<R> pw;  // each thread its own copy (for_row_blocks)
    if (Cell::DENSE) pack_loop_weights<R, 2>(pw, whh, H, H, G, T, B, 0, 0, false, true);
    const WPack<R>* wp = pw.get();
    const int rows = b1 - b0;
    std::vector<R> abuf(Cell::DENSE ? (size_t)rows * G : 0);
    R* gh = abuf.data();
    for (int s = 0; s < T; ++s) {
      const int t = st.t(s), p = st.prev(t), n = st.nxt(t);
      if (Cell::DENSE)
        gemm_add<R>(S + ((long)p * B + b0) * H, H, nullptr, 0, nullptr, 0, gh, G, rows, H, G, wp);
      for (int b = b0; b < b1; ++b) {
        const R* x = gx + ((long)t * B + b) * G;
        const R* ghr = Cell::DENSE ? gh + (long)(b - b0) * G : x;  // unread without DENSE
        const R* hp = S + ((long)p * B + b) * H;
        R* hnx = S + ((long)n * B + b) * H;
        const R* cp = Cell::HAS_C ? C + ((long)p * B + b) * H : nullptr;
        R* cn = Cell::HAS_C ? C + ((long)n * B + b) * H : nullptr;
        R* y = Y + ((long)t * B + b) * H;
        R* gt = W ? gates + (long)t * gates_ts + (long)b * W : nullptr;
        const bool act = t < L[b];
#pragma omp simd
        for (int j = 0; j < H; ++j) {
          const R c0 = Cell::HAS_C ? cp[j] : R(0);
          R c = c0, h;
          Cell::template forward<CpuMath, R>(x + j, ghr + j, H, konst ? konst + j : nullptr, H,
                                             c0, hp[j], flags, W ? gt + j : nullptr, H, c, h);
          if (Cell::HAS_C) cn[j] = act ? c : c0;
          hnx[j] = act ? h : hp[j];
          y[j] = act ? h : R(0);
        }
      }
    }
  });
}

template <class Cell, class R>
static void cell_backward(int T, int B, int H, const R* whh, const int* L, int reverse,
                          const R* konst, const R* S, const R* C, const R* gates, const R* dY,
                          R* dh_io, R* dc_io, R* dGx, R* dGh, int flags, int nthreads) {
  const int G = Cell::G * H, W = Cell::SAVED * H;
  Steps st{T, reverse, T + 1};
  R* dG = Cell::SPLIT_DGH ? dGh : dGx;  // what multiplies W_hh
  for_row_blocks(B, (double)T * B * G * (Cell::DENSE ? H : 1), nthreads, [&](int b0, int b1) {
    LoopWeights<R> pw;  // each thread its own copy (for_row_blocks)
    if (Cell::DENSE) pack_loop_weights<R, 2>(pw, whh, H, G, H, T, B);
    const WPack<R>* wp = pw.get();
    for (int s = T - 1; s >= 0; --s) {
      const int t = st.t(s), p = st.prev(t), n = st.nxt(t);
      for (int b = b0; b < b1; ++b) {
        const R* gt = W ? gates + ((long)t * B + b) * W : nullptr;
        const R* hp = S + ((long)p * B + b) * H;
        const R* hn = S + ((long)n * B + b) * H;
        const R* cp = Cell::HAS_C ? C + ((long)p * B + b) * H : nullptr;
        const R* cn = Cell::HAS_C ? C + ((long)n * B + b) * H : nullptr;
        const R* dy = dY + ((long)t * B + b) * H;
        R* dh = dh_io + (long)b * H;
        R* dc = Cell::HAS_C ? dc_io + (long)b * H : nullptr;
        R* dx = dGx + ((long)t * B + b) * G;
        R* dhh = Cell::SPLIT_DGH ? dGh + ((long)t * B + b) * G : dx;
        if (t >= L[b]) {  // past the row's end: zero gate gradients, dh and dc carried
          std::fill(dx, dx + G, R(0));
          if (Cell::SPLIT_DGH) std::fill(dhh, dhh + G, R(0));
          continue;
        }
#pragma omp simd
        for (int j = 0; j < H; ++j) {
          R dcj = Cell::HAS_C ? dc[j] : R(0), dhp;
          Cell::template backward<CpuMath, R>(
              W ? gt + j : nullptr, H, konst ? konst + j : nullptr, H,
              Cell::HAS_C ? cn[j] : R(0), Cell::HAS_C ? cp[j] : R(0), hn[j], hp[j],
              dh[j] + dy[j], dcj, flags, dx + j, dhh + j, H, dhp);
          if (Cell::HAS_C) dc[j] = dcj;
          dh[j] = dhp;
        }
      }
      if (Cell::DENSE)
        gemm_acc<R>(dG + ((long)t * B + b0) * G, G, whh, H, dh_io + (long)b0 * H, H, b1 - b0, G,
                    H, wp);
    }
  });
}

}  // namespace

// ---- C exports: <cell>_<forward|backward>_<f32|f64> ---------------------------------------
#define GL_DEFINE(SUF, R)                                                                      \
  GL_EXPORT void lstm_forward_##SUF(int T, int B, int H, const R* gx, const R* x, int I,      \
      const R* wih, const R* bias, const R* whh, const int* L, int rev, int slots, R* S,        \
      R* C, const R* peep, R* gates, long gts, R* Y, int flags, int nt) {                       \
    lstm_forward_any<R>(T, B, H, LstmInput<R>{gx, x, wih, bias, I}, whh, L, rev, slots, S, C,   \
                        peep, gates, gts, Y, flags, nt); }                                      \
  GL_EXPORT void lstm_backward_##SUF(int T, int B, int H, const R* whh, const int* L, int rev, \
      const R* C, const R* peep, const R* gates, const R* dY, R* dh, R* dc, R* dG, R* db,      \
      int window, int flags, int nt) {                                                          \
    lstm_backward_any<R>(T, B, H, whh, L, rev, C, peep, gates, dY, dh, dc, dG, db, window,      \
                         flags, nt); }                                                          \
  GL_EXPORT void gru_forward_##SUF(int T, int B, int H, const R* gx, const R* whh,            \
      const R* b_hn, const int* L, int rev, int slots, R* S, R* gates, long gts, R* Y, int nt) { \
    gru_forward<R>(T, B, H, gx, whh, b_hn, L, rev, slots, S, gates, gts, Y, nt); }              \
  GL_EXPORT void gru_backward_##SUF(int T, int B, int H, const R* whh, const int* L, int rev, \
      const R* S, const R* gates, const R* dY, R* dh, R* dGx, R* dGh, int nt) {               \
    gru_backward<R>(T, B, H, whh, L, rev, S, gates, dY, dh, dGx, dGh, nt); }                   \
  GL_EXPORT void rnn_forward_##SUF(int T, int B, int H, const R* gx, const R* whh,            \
      const int* L, int rev, int slots, R* S, R* Y, int flags, int nt) {                       \
    if (flags & RNN_RELU) rnn_forward<R, RNN_RELU>(T, B, H, gx, whh, L, rev, slots, S, Y, nt); \
    else rnn_forward<R, 0>(T, B, H, gx, whh, L, rev, slots, S, Y, nt); }                        \
  GL_EXPORT void rnn_backward_##SUF(int T, int B, int H, const R* whh, const int* L, int rev, \
      const R* S, const R* dY, R* dh, R* dG, int flags, int nt) {                              \
    if (flags & RNN_RELU) rnn_backward<R, RNN_RELU>(T, B, H, whh, L, rev, S, dY, dh, dG, nt);  \
    else rnn_backward<R, 0>(T, B, H, whh, L, rev, S, dY, dh, dG, nt); }

GL_DEFINE(f32, float)
GL_DEFINE(f64, double)

// C[M,N] = C0 + op(A) @ op(W) through the BLAS (scipy-openblas32's OpenBLAS; op: the
// transpose with ta / tw, i.e. a column-major view; row strides lda, ldw, ld0, ldc; C0 null:
// zeros, C0 = C: accumulate, ld0 = 0: one row broadcast, the bias): the execution's matmul
// (the input projection of every time step in one GEMM, the weight and input gradients of
// the whole sequence). 1 thread, best of 7, on a 2-core AVX-512 Xeon: 125-150 GFLOP/s at the
// LSTM's weight gradients (the hand GEMM this replaced: 62-74; docs/design.md, "BLAS").
//
// Threads: OpenBLAS's own pool is not bitwise stable across thread counts (measured: its
// split of N leaves different columns to its edge kernels, float64 (120, 280, 140) differs
// in 170 of 16800 elements between 1 and 2 threads, ~1 ulp; and it splits a K above its
// GEMM_Q differently with 1 thread than with several). So the BLAS runs single threaded
// (blas_set_num_threads(1) at load: one pool, OpenMP's, no oversubscription) on blocks of
// rows fixed by the shape alone (blas_block_rows), which the OpenMP threads share out; and
// K in blocks of kBlasK, each one call accumulating into C. Every element then sums in an
// order that depends on the shape, never on the thread count.
constexpr int kBlasK = 256;  // <= GEMM_Q of every OpenBLAS x86-64 / ARMv8 kernel we know of
// rows of a block: about M / 8 (8 blocks: enough for 8 threads) in multiples of 64, at
// least 128 (each block packs W again: 8 blocks at (2048, 6400, 512) cost 2 % vs one call)
static int blas_block_rows(int M) {
  const int per = ((M + 7) / 8 + 63) / 64 * 64;
  return std::max(128, per);
}

template <class R>
static void blas_call(int M, int K, int N, int ta, const R* A, long lda, int tw, const R* W,
                      long ldw, const R* C0, long ld0, R* C, long ldc) {
  if (M <= 0 || N <= 0) return;
  R beta = R(0);
  if (C0 == C) {
    beta = R(1);
  } else if (C0) {  // the initial value copied in, then accumulated
    for (int r = 0; r < M; ++r) std::memcpy(C + (long)r * ldc, C0 + (long)r * ld0, N * sizeof(R));
    beta = R(1);
  }
  if (K <= 0) {  // nothing to add (and a [M, 0] operand has no valid leading dimension)
    if (!C0)
      for (int r = 0; r < M; ++r) std::fill(C + (long)r * ldc, C + (long)r * ldc + N, R(0));
    return;
  }
  const auto op = [](int t) { return t ? CblasTrans : CblasNoTrans; };
  for (int k0 = 0; k0 < K; k0 += kBlasK, beta = R(1)) {
    const int kn = std::min(kBlasK, K - k0);
    const R* Ak = ta ? A + (long)k0 * lda : A + k0;
    const R* Wk = tw ? W + k0 : W + (long)k0 * ldw;
    if constexpr (std::is_same<R, float>::value)
      scipy_cblas_sgemm(CblasRowMajor, op(ta), op(tw), M, N, kn, 1.0f, Ak, (blasint)lda, Wk,
                        (blasint)ldw, beta, C, (blasint)ldc);
    else
      scipy_cblas_dgemm(CblasRowMajor, op(ta), op(tw), M, N, kn, 1.0, Ak, (blasint)lda, Wk,
                        (blasint)ldw, beta, C, (blasint)ldc);
  }
}

template <class R>
static void blas_gemm(int M, int K, int N, int ta, const R* A, long lda, int tw, const R* W,
                      long ldw, const R* C0, long ld0, R* C, long ldc, int nthreads) {
  const int per = blas_block_rows(M), nb = (M + per - 1) / per;
  int nt = std::min(requested_threads(nthreads), nb);
  nt = std::max(1, std::min(nt, (int)std::min(1e6, (double)M * K * N / kMinMacs)));
  // OpenBLAS's pool back to 1 thread where something set it (threadpoolctl's limits do): a
  // pool called from inside the parallel region oversubscribes (OpenBLAS warns "Detect
  // OpenMP Loop" and may hang)
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
  auto block = [&](int i) {
    const long r0 = (long)i * per;
    blas_call<R>(std::min(per, M - (int)r0), K, N, ta, ta ? A + r0 : A + r0 * lda, lda, tw, W,
                 ldw, C0 == C ? C + r0 * ldc : C0 ? C0 + r0 * ld0 : nullptr, ld0,
                 C + r0 * ldc, ldc);
  };
  if (nt == 1) {
    for (int i = 0; i < nb; ++i) block(i);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int i = 0; i < nb; ++i) block(i);
}

#define GL_GEMM(SUF, R)                                                                         \
  GL_EXPORT void gemm_##SUF(int M, int K, int N, int ta, const R* A, long lda, int tw,         \
                            const R* W, long ldw, const R* C0, long ld0, R* C, long ldc,       \
                            int nt) {                                                           \
    blas_gemm<R>(M, K, N, ta, A, lda, tw, W, ldw, C0, ld0, C, ldc, nt);                        \
  }
GL_GEMM(f32, float)
GL_GEMM(f64, double)

// The BLAS's own thread pool: set to 1 when the library loads (gemm_* above shares its
// blocks over OpenMP's threads instead)
GL_EXPORT void blas_set_num_threads(int n) { scipy_openblas_set_num_threads(n); }
GL_EXPORT int blas_get_num_threads() { return scipy_openblas_get_num_threads(); }
GL_EXPORT const char* blas_config() { return scipy_openblas_get_config(); }

// dst[cols, rows] = src[rows, cols]^T (src row stride lds; dst C-contiguous)
GL_EXPORT void transpose_f32(int rows, int cols, const float* src, long lds, float* dst) {
  transpose<float>(rows, cols, src, lds, dst, rows);
}
GL_EXPORT void transpose_f64(int rows, int cols, const double* src, long lds, double* dst) {
  transpose<double>(rows, cols, src, lds, dst, rows);
}

// Elementwise exp/sigmoid/tanh of this library (tests compare them with NumPy's).
// cell_<Struct>_<forward|backward>_<f32|f64> for every cell struct of kernels/cells/ (the
// build passes their headers with -include and their names in GL_CELL_STRUCTS, as
// gpulstm/kernel_source.py instantiates the CUDA loop kernels for each)
#define GL_DEFINE_CELL_SUF(CELL, SUF, R)                                                       \
  GL_EXPORT void cell_##CELL##_forward_##SUF(int T, int B, int H, const R* gx, const R* whh,  \
      const R* konst, const int* L, int rev, int slots, R* S, R* C, R* gates, long gts, R* Y,  \
      int flags, int nt) {                                                                     \
    cell_forward<CELL, R>(T, B, H, gx, whh, konst, L, rev, slots, S, C, gates, gts, Y, flags,  \
                          nt); }                                                               \
  GL_EXPORT void cell_##CELL##_backward_##SUF(int T, int B, int H, const R* whh,              \
      const R* konst, const int* L, int rev, const R* S, const R* C, const R* gates,           \
      const R* dY, R* dh, R* dc, R* dGx, R* dGh, int flags, int nt) {                          \
    cell_backward<CELL, R>(T, B, H, whh, L, rev, konst, S, C, gates, dY, dh, dc, dGx, dGh,     \
                           flags, nt); }
#define GL_DEFINE_CELL(CELL) GL_DEFINE_CELL_SUF(CELL, f32, float) GL_DEFINE_CELL_SUF(CELL, f64, double)
#ifdef GL_CELL_STRUCTS
GL_CELL_STRUCTS(GL_DEFINE_CELL)
#endif

GL_EXPORT void activations_f32(const float* x, long n, float* e, float* s, float* th) {
#pragma omp simd
  for (long k = 0; k < n; ++k) { e[k] = vexp<float>(x[k]); s[k] = vsigmoid<float>(x[k]); th[k] = vtanh<float>(x[k]); }
}
GL_EXPORT void activations_f64(const double* x, long n, double* e, double* s, double* th) {
#pragma omp simd
  for (long k = 0; k < n; ++k) { e[k] = vexp<double>(x[k]); s[k] = vsigmoid<double>(x[k]); th[k] = vtanh<double>(x[k]); }
}

GL_EXPORT int last_threads() { return g_last_threads.load(); }
// rows of the main register tile (tests size their batches by it)
GL_EXPORT int tile_rows() { return RM; }

GL_EXPORT int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

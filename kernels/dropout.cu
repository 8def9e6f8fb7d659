// dropout.cu: the scaled dropout keep mask between layers, from the counter-based generator
// Philox4x32-10 (Salmon et al., SC 2011; Random123), seeded, with no state on the device.
// Reference: gpulstm/backends/philox.py, dropout_mask (the same stream, bit for bit).
//
// Stream layout (docs/gpu.md, "Dropout masks"): key = (seed mod 2^32, seed >> 32); thread i
// computes Philox block i with the 64-bit counter b = offset + i (mod 2^64) in the two low
// counter words, (b mod 2^32, b >> 32, 0, 0), and writes elements 4i .. 4i+3 (those < n) from
// output words 0 .. 3. Element with output word u is kept where (u >> 8) >= threshold, which
// is the rule uniform >= p for the uniform (u >> 8) * 2^-24 with threshold = ceil(p * 2^24)
// (computed on the host, exact); kept elements get `scale` = 1 / (1 - p), the others 0
// (threshold = 2^24 and scale = 0 for p = 1: all zero, as torch).
//
// Launch: ceil(n / 4) threads, 1-D blocks of 256 threads (gpulstm.backends.kernel_pointwise);
// indices are 64-bit, so any n that fits in memory works.
#include "gpulstm_common.cuh"

struct GlPhilox4 {
  unsigned int x, y, z, w;
};

// The low 32 bits of a * b; the high 32 bits go to *hi.
__device__ __forceinline__ unsigned int gl_mulhilo(const unsigned int a, const unsigned int b,
                                                   unsigned int* hi) {
  const unsigned long long p = (unsigned long long)a * (unsigned long long)b;
  *hi = (unsigned int)(p >> 32);
  return (unsigned int)p;
}

// Philox4x32-10 of counter c under key (k0, k1).
__device__ __forceinline__ GlPhilox4 gl_philox4x32_10(GlPhilox4 c, unsigned int k0,
                                                      unsigned int k1) {
#pragma unroll
  for (int r = 0; r < 10; ++r) {
    if (r) {  // key schedule: the Weyl increments between rounds
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    unsigned int hi0, hi1;
    const unsigned int lo0 = gl_mulhilo(0xD2511F53u, c.x, &hi0);
    const unsigned int lo1 = gl_mulhilo(0xCD9E8D57u, c.z, &hi1);
    GlPhilox4 n;
    n.x = hi1 ^ c.y ^ k0;
    n.y = lo1;
    n.z = hi0 ^ c.w ^ k1;
    n.w = lo0;
    c = n;
  }
  return c;
}

template <typename T>
__device__ __forceinline__ T gl_keep(const unsigned int u, const unsigned int threshold,
                                     const T scale) {
  return (u >> 8) >= threshold ? scale : T(0);
}

template <typename T>
__global__ void dropout_mask(
    T* mask,                          // [n] out: scale where kept, 0 where dropped
    const long long n,                // elements
    const unsigned long long seed,    // the Philox key
    const unsigned long long offset,  // counter of this mask's first block
    const unsigned int threshold,     // ceil(p * 2^24): keep where (u >> 8) >= threshold
    const T scale) {                  // 1 / (1 - p) (0 for p = 1)
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const long long e = 4 * i;
  if (e >= n) return;
  const unsigned long long b = offset + (unsigned long long)i;
  GlPhilox4 c;
  c.x = (unsigned int)b;
  c.y = (unsigned int)(b >> 32);
  c.z = 0u;
  c.w = 0u;
  const GlPhilox4 r = gl_philox4x32_10(c, (unsigned int)seed, (unsigned int)(seed >> 32));
  mask[e] = gl_keep(r.x, threshold, scale);
  if (e + 1 < n) mask[e + 1] = gl_keep(r.y, threshold, scale);
  if (e + 2 < n) mask[e + 2] = gl_keep(r.z, threshold, scale);
  if (e + 3 < n) mask[e + 3] = gl_keep(r.w, threshold, scale);
}

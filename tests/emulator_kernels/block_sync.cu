// Test kernels for the emulator: barriers, shared memory, warp intrinsics (fiber mode).

// Reverses each block's slice through static shared memory: wrong without a real barrier.
template <typename T>
__global__ void block_reverse(T* out, const T* in, int n) {
  __shared__ T tile[1024];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  tile[threadIdx.x] = i < n ? in[i] : T(-1);
  __syncthreads();
  const int j = blockDim.x - 1 - threadIdx.x;
  if (i < n) out[i] = tile[j];
}

// Tree reduction of each block's slice (blockDim a power of two): partial[blockIdx.x].
template <typename T>
__global__ void block_sum(T* partial, const T* in, int n) {
  __shared__ T s[1024];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? in[i] : T(0);
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

// Block sum by warp shuffles: shfl_down within warps, then warp 0 combines via shared.
template <typename T>
__global__ void warp_block_sum(T* partial, const T* in, int n) {
  __shared__ T warp_sums[32];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  T v = i < n ? in[i] : T(0);
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = (blockDim.x + 31) / 32;
    v = lane < nwarps ? warp_sums[lane] : T(0);
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) partial[blockIdx.x] = v;
  }
}

// Every shuffle variant once per thread: out[k, t] for k = 0..4, within one block.
extern "C" __global__ void shuffles(float* out, const float* in, int width, int delta) {
  const int t = threadIdx.x, n = blockDim.x;
  const float v = in[t];
  out[0 * n + t] = __shfl_sync(0xffffffffu, v, delta, width);
  out[1 * n + t] = __shfl_up_sync(0xffffffffu, v, delta, width);
  out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, delta, width);
  out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, delta, width);
  out[4 * n + t] = float(__ballot_sync(0xffffffffu, v > 0.0f) & 0xffffu);
}

// Votes and counting barriers: out[t] = (ballot, any, all, count, and, or) per thread.
extern "C" __global__ void votes(int* out, const float* in) {
  const int t = threadIdx.x;
  const bool p = in[t] > 0.0f;
  int* o = out + 6 * t;
  o[0] = int(__ballot_sync(0xffffffffu, p));
  o[1] = __any_sync(0xffffffffu, p);
  o[2] = __all_sync(0xffffffffu, p);
  o[3] = __syncthreads_count(p);
  o[4] = __syncthreads_and(p);
  o[5] = __syncthreads_or(p);
}

// Reverse through dynamic shared memory (size from the launch's shared_mem).
extern "C" __global__ void dynamic_reverse(double* out, const double* in, int n) {
  extern __shared__ double tile[];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  tile[threadIdx.x] = i < n ? in[i] : -1.0;
  __syncthreads();
  if (i < n) out[i] = tile[blockDim.x - 1 - threadIdx.x];
}

// Reads dynamic shared memory nobody wrote: must see the poison (NaN).
extern "C" __global__ void read_unwritten_shared(float* out) {
  extern __shared__ __align__(16) float scratch[];
  __syncthreads();
  out[threadIdx.x] = scratch[threadIdx.x];
}

// Early return before the barrier: exited threads do not hold the barrier up.
extern "C" __global__ void early_exit(float* out, const float* in, int n) {
  __shared__ float s[1024];
  const int t = threadIdx.x;
  if (t >= n) return;
  s[t] = in[t];
  __syncthreads();
  out[t] = s[n - 1 - t];
}

// Lane 0 of warp 0 waits at the block barrier while lanes 1..31 wait for it at
// __syncwarp: a deadlock the emulator must report.
extern "C" __global__ void divergent_barrier(float* out) {
  if (threadIdx.x == 0) __syncthreads();
  else __syncwarp();
  out[threadIdx.x] = 1.0f;
}

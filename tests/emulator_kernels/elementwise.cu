// Test kernels for the emulator: elementwise and indexing, no barriers (sequential mode).

template <typename T>
__device__ __forceinline__ T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }

// out[i] = a * sigmoid(x[i]) + b * tanh(y[i]), 1-D grid, any n.
template <typename T>
__global__ void axpby_act(T* __restrict__ out,      // [n]
                          const T* __restrict__ x,  // [n]
                          const T* __restrict__ y,  // [n]
                          T a, T b, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a * sigmoid(x[i]) + b * tanh(y[i]);
}

// out[r, c] = x[r, c] + bias[c], 2-D grid and block, any rows/cols.
template <typename T>
__global__ void add_bias_2d(T* out,          // [rows, cols]
                            const T* x,      // [rows, cols]
                            const T* bias,   // [cols]
                            int rows, int cols) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int r = blockIdx.y * blockDim.y + threadIdx.y;
  if (r < rows && c < cols) out[r * cols + c] = x[r * cols + c] + bias[c];
}

// Writes every index variable of every thread: out[gid] = one record of 12 ints.
extern "C" __global__ void thread_ids(int* out) {  // [grid threads, 12]
  const int bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int* o = out + 12 * (bid * blockDim.x * blockDim.y * blockDim.z + tid);
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockIdx.x;  o[4] = blockIdx.y;  o[5] = blockIdx.z;
  o[6] = blockDim.x;  o[7] = blockDim.y;  o[8] = blockDim.z;
  o[9] = gridDim.x;   o[10] = gridDim.y;  o[11] = gridDim.z;
}

// The CUDA math functions RNN kernels use, float: out[k, i] for k = 0..13.
extern "C" __global__ void math_float(float* out, const float* x, const float* y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float a = x[i], b = y[i];
  float* o = out + i;
  o[0 * n] = expf(a);
  o[1 * n] = tanhf(b);
  o[2 * n] = logf(fabsf(a) + 1.0f);
  o[3 * n] = sqrtf(fabsf(b));
  o[4 * n] = rsqrtf(fabsf(b) + 1.0f);
  o[5 * n] = __expf(b);
  o[6 * n] = __fdividef(a, b);
  o[7 * n] = fmaf(a, b, 1.0f);
  o[8 * n] = copysignf(a, b);
  o[9 * n] = fmaxf(a, b);
  o[10 * n] = fminf(a, b);
  o[11 * n] = max(a, b) - min(a, b);
  o[12 * n] = exp(a) * tanh(b);  // float overloads, as in CUDA
  o[13 * n] = float(min(i, 7) + max(3u, unsigned(i)));
}

// Histogram with atomicAdd (blocks and threads collide on the same bins).
extern "C" __global__ void histogram(unsigned* bins, float* total, const int* keys,
                                     const float* w, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    atomicAdd(&bins[keys[i]], 1u);
    atomicAdd(total, w[i]);
  }
}

// One parameter of every supported scalar type: out[0..5] = the values.
extern "C" __global__ void all_types(double* out, int a, long long b, unsigned c,
                                     unsigned long long d, float e, double f, bool g) {
  out[0] = a; out[1] = double(b); out[2] = c; out[3] = double(d); out[4] = e; out[5] = f;
  out[6] = g ? 1.0 : -1.0;
}

// PTX surface for the parser: the instruction families shared/notes/ptx-surface.md lists for
// ggml-cuda, in small kernels (half and bf16 need cccl's <nv/target>, which scripts/setup-nvcc.sh does not fetch: not here yet) (host/ptx/tests/nvcc_surface.rs compiles this with nvcc for
// compute_75, 80 and 90, with and without -use_fast_math, and parses every body).
#include <cstdio>

struct Params {
  float scale;
  int n;
  double bias;
  char tag[3];
};

__constant__ float k_table[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
__device__ unsigned int g_count;
__device__ float *g_ptr = nullptr;

__device__ __forceinline__ float helper(float x, int i) { return x * k_table[i & 15]; }

extern "C" __global__ void warp_ops(const float *in, float *out, unsigned *ballots, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float v = in[i];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffff, v, off);
  v += __shfl_down_sync(0xffffffff, v, 1) + __shfl_up_sync(0xffffffff, v, 2) + __shfl_sync(0xffffffff, v, 3);
  unsigned b = __ballot_sync(0xffffffff, v > 0.0f);
  if (__any_sync(0xffffffff, v < 0.0f) && __all_sync(0xffffffff, v != 1.0f)) b ^= 1u;
  __syncwarp();
  ballots[i] = b + __popc(b) + __clz(b) + __brev(b);
  out[i] = helper(v, i);
}

extern "C" __global__ void atomics(int *ctr, unsigned long long *big, float *fsum, int n) {
  __shared__ int s_hist[32];
  if (threadIdx.x < 32) s_hist[threadIdx.x] = 0;
  __syncthreads();
  atomicAdd(&s_hist[threadIdx.x % 32], 1);
  __syncthreads();
  if (threadIdx.x < 32) atomicAdd(&ctr[threadIdx.x], s_hist[threadIdx.x]);
  atomicCAS(big, 0ull, 1ull);
  atomicExch(ctr + 40, n);
  atomicMax(ctr + 41, (int)threadIdx.x);
  atomicAdd(fsum, 1.5f);
  atomicInc(&g_count, 1000u);
}

extern "C" __global__ void math(const float *x, float *y, double *z, int *q, Params p) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  float v = x[i] * p.scale;
  y[i] = expf(v) + logf(fabsf(v) + 1.0f) + sinf(v) * cosf(v) + rsqrtf(fabsf(v) + 1.0f) + tanhf(v) + fminf(v, 2.0f);
  z[i] = sqrt((double)v) + p.bias + (double)p.tag[1];
  int a = __float2int_rn(v), b = (int)p.tag[0] + 3;
  q[i] = a / b + a % b + (unsigned)a / 7u + __dp4a(a, b, 1) + __mul24(a, b) + __umulhi(a, b) + max(a, b) + __sad(a, b, 0u);
  long long w = (long long)a * b;
  q[i + p.n] = (int)(w >> 33) + (int)(w / 5);
}

extern "C" __global__ void memory(const float *in, float *out, int k, int n) {
  extern __shared__ float dyn[];
  float local[24];
  for (int j = 0; j < 24; j++) local[j] = in[(threadIdx.x + j) % n];
  dyn[threadIdx.x] = local[k % 24];
  __syncthreads();
  float4 v4 = reinterpret_cast<const float4 *>(in)[threadIdx.x % (n / 4)];
  out[blockIdx.x * blockDim.x + threadIdx.x] = dyn[(threadIdx.x + 1) % blockDim.x] + v4.x + v4.w + __ldg(in + k);
  if (g_ptr) g_ptr[0] = 1.0f;
}

extern "C" __global__ void say(int n) {
  if (threadIdx.x == 0 && n < 0) {
    printf("block %d n %d %f\n", blockIdx.x, n, 1.5);
    __trap();
  }
}

template <typename T, int N>
__global__ void tmpl(T *p) {
#pragma unroll
  for (int j = 0; j < N; j++) p[threadIdx.x * N + j] += (T)j;
}
template __global__ void tmpl<float, 4>(float *);
template __global__ void tmpl<long long, 3>(long long *);

// Kernel attributes and module variables that fatbin/tests/attrs.rs checks: static shared memory,
// __launch_bounds__, __maxnreg__, local memory, and __device__/__constant__ variables with and
// without initial values.
#include <cuda_runtime.h>
__device__ int counter;                       // zero-initialised
__device__ float gtable[4] = {1.0f, 2.0f, 3.0f, 4.0f};
__constant__ int coeffs[3] = {7, 8, 9};
__constant__ double czero[2];
__device__ char big[100000];

__global__ void __launch_bounds__(128) bounded(float *out, int n) {
    __shared__ float tile[256];
    tile[threadIdx.x] = out[threadIdx.x] * coeffs[threadIdx.x % 3];
    __syncthreads();
    if (threadIdx.x < n) out[threadIdx.x] = tile[(threadIdx.x + 1) % 128] + gtable[n & 3] + big[n];
    atomicAdd(&counter, 1);
}

extern __shared__ unsigned char dyn[];
__global__ void dynshared(unsigned char *out, size_t n) {
    __shared__ int st[10];
    st[threadIdx.x % 10] = threadIdx.x;
    dyn[threadIdx.x] = (unsigned char)n;
    __syncthreads();
    out[threadIdx.x] = dyn[(threadIdx.x + 1) % blockDim.x] + st[3] + (int)czero[0];
}

__global__ void __maxnreg__(32) reqd(int *p) { int local[64]; for (int i = 0; i < 64; i++) local[i] = p[i] * i; p[threadIdx.x] = local[p[0] & 63]; }

// The module tests/emu_kernels.rs loads into the emu executor through the raw protocol: kernels
// with known parameter layouts and attributes, and __device__/__constant__ variables with known
// initial values.
#include <cuda_runtime.h>

struct Pair {
    int a;     // 0
    double b;  // 8, sizeof(Pair) == 16
};

__device__ int counter;                                  // zero-initialised, 4 bytes
__device__ float gtable[4] = {1.0f, 2.0f, 3.0f, 4.0f};  // 16 bytes with initial values
__constant__ int coeffs[3] = {7, 8, 9};                  // 12 bytes of constant memory

// (float *out, int n): offsets 0 and 8, 12 bytes; at most 128 threads; 1 KiB static shared.
__global__ void __launch_bounds__(128) bounded(float *out, int n) {
    __shared__ float tile[256];
    tile[threadIdx.x] = out[threadIdx.x] * coeffs[threadIdx.x % 3];
    __syncthreads();
    if (threadIdx.x < n) out[threadIdx.x] = tile[(threadIdx.x + 1) % 128] + gtable[n & 3];
    atomicAdd(&counter, 1);
}

// (float *x, float f, Pair p, char c): offsets 0, 8, 16, 32; 33 bytes.
__global__ void scale(float *x, float f, Pair p, char c) { x[threadIdx.x] = x[threadIdx.x] * f + p.a + p.b + c; }

// Dynamic shared memory.
extern __shared__ unsigned char dyn[];
__global__ void dynshared(unsigned char *out) {
    dyn[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = dyn[(threadIdx.x + 1) % blockDim.x];
}

extern "C" __global__ void noparams() { counter = 1; }

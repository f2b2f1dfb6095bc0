// Kernels whose parameter layouts fatbin/tests/nvcc.rs checks against these declarations.
#include <cuda_runtime.h>

struct S {
    char c;    // 0
    double d;  // 8
    int i;     // 16, sizeof(S) == 24, alignof(S) == 8
};

__constant__ float table[16];
__device__ float sink[4];

__device__ __noinline__ int helper(int x) { return x * 3; }

// Mixed alignment: offsets 0, 8, 16, 24, 32; total 33.
__global__ void mixed(char a, double b, short c, int *p, char e) {
    if (p) *p = a + (int)b + c + e + (int)table[0] + helper(a);
}

// A struct by value: offsets 0, 24, 32; sizes 24, 4, 8; total 40.
__global__ void bystruct(S s, int n, float *out) { out[n] = s.c + s.d + s.i; }

// Many parameters: a0..a15 at 0..60, v (16-byte aligned) at 64, c at 80; total 81.
__global__ void many(int a0, int a1, int a2, int a3, int a4, int a5, int a6, int a7, int a8, int a9,
                     int a10, int a11, int a12, int a13, int a14, int a15, float4 v, char c) {
    if (c) sink[0] = table[2] + a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15 + v.x;
}

// Templates: (T *, T) at 0 and 8.
template <typename T> __global__ void tmpl(T *x, T v) { x[0] = v; }
template __global__ void tmpl<float>(float *, float);
template __global__ void tmpl<double>(double *, double);

// No parameters, C linkage (unmangled name).
extern "C" __global__ void noparams() { sink[1] = table[1]; }

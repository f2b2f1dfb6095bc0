// Shared memory: a block reduction over dynamic shared memory at several sizes, a kernel with
// static and dynamic shared memory together, and cudaFuncSetAttribute
// (MaxDynamicSharedMemorySize) to launch with more than the default 48 KiB.
#include "cu_check.h"

// Sums `n` floats per block using blockDim.x floats of dynamic shared memory.
__global__ void block_sum(const float *in, float *out, int n) {
  extern __shared__ float buf[];
  int t = threadIdx.x;
  float acc = 0;
  for (int i = t; i < n; i += blockDim.x) acc += in[blockIdx.x * n + i];
  buf[t] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) buf[t] += buf[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = buf[0];
}

// 1 KiB static + `words` ints of dynamic shared memory, all touched.
__global__ void big_shared(int *out, int words) {
  __shared__ int fixed[256];
  extern __shared__ int dyn[];
  for (int i = threadIdx.x; i < words; i += blockDim.x) dyn[i] = i ^ 0x5a5a;
  fixed[threadIdx.x % 256] = (int)threadIdx.x;
  __syncthreads();
  int acc = 0;
  for (int i = threadIdx.x; i < words; i += blockDim.x) acc += dyn[words - 1 - i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc + fixed[(threadIdx.x + 1) % 256];
}

int main() {
  cu_init("shared");
  const int blocks = 8, n = 4096;
  float *din, *dsum;
  CU_OK(cudaMalloc(&din, blocks * n * sizeof(float)));
  CU_OK(cudaMalloc(&dsum, 4 * blocks * sizeof(float)));
  static float hin[blocks * n];
  for (int i = 0; i < blocks * n; i++) hin[i] = (float)((i * 7) % 13) - 6.0f;
  CU_OK(cudaMemcpy(din, hin, sizeof hin, cudaMemcpyHostToDevice));

  const int threads[4] = {32, 128, 256, 1024};
  for (int k = 0; k < 4; k++) {
    size_t shm = threads[k] * sizeof(float);
    float *out = dsum + k * blocks;
    CuParams p;
    p.add((const float *)din);
    p.add(out);
    p.add(n);
    cu_expect_launch("_Z9block_sumPKfPfi", dim3(blocks), dim3(threads[k]), shm, p, "legacy");
    block_sum<<<blocks, threads[k], shm>>>(din, out, n);
  }

  // 100 KiB of dynamic shared memory needs the attribute first (sm_80: up to 163 KiB; sm_90: 227 KiB).
  const int words = 100 * 1024 / 4;
  const size_t big = words * sizeof(int);
  CU_OK(cudaFuncSetAttribute(big_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)big));
  cudaFuncAttributes fa;
  CU_OK(cudaFuncGetAttributes(&fa, big_shared));
  CU_REQUIRE(fa.maxDynamicSharedSizeBytes == (int)big, "maxDynamicSharedSizeBytes = %d after setting %zu",
             fa.maxDynamicSharedSizeBytes, big);
  CU_REQUIRE(fa.sharedSizeBytes == 1024, "static shared of big_shared = %zu", fa.sharedSizeBytes);
  int *dbig;
  CU_OK(cudaMalloc(&dbig, 2 * 256 * sizeof(int)));
  {
    CuParams p;
    p.add(dbig);
    p.add(words);
    cu_expect_launch("_Z10big_sharedPii", dim3(2), dim3(256), big, p, "legacy");
    big_shared<<<2, 256, big>>>(dbig, words);
  }
  cu_sync("shared");

  {
    float hs[4 * blocks];
    CU_OK(cudaMemcpy(hs, dsum, sizeof hs, cudaMemcpyDeviceToHost));
    for (int b = 0; b < blocks; b++) {
      double want = 0;
      for (int i = 0; i < n; i++) want += hin[b * n + i];
      for (int k = 0; k < 4; k++) CU_REQUIRE(hs[k * blocks + b] == (float)want, "block_sum<%d>[%d] = %g, expected %g", threads[k], b, hs[k * blocks + b], want);
    }
    static int hb[2 * 256];
    CU_OK(cudaMemcpy(hb, dbig, sizeof hb, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 2 * 256; i++) {
      int t = i % 256, acc = 0;
      for (int j = t; j < words; j += 256) acc += (words - 1 - j) ^ 0x5a5a;
      CU_REQUIRE(hb[i] == acc + (t + 1) % 256, "big_shared[%d] = %d, expected %d", i, hb[i], acc + (t + 1) % 256);
    }
    cu_result_host("shared.sums", hs, sizeof hs);
    cu_result_host("shared.big", hb, sizeof hb);
  }
  CU_OK(cudaFree(din));
  CU_OK(cudaFree(dsum));
  CU_OK(cudaFree(dbig));
  return cu_pass();
}

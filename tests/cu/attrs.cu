// cudaFuncGetAttributes (registers, static shared and local memory, __launch_bounds__, versions),
// cudaFuncSetAttribute, and the occupancy calculator (cudaOccupancyMaxActiveBlocksPerMultiprocessor
// and the header's cudaOccupancyMaxPotentialBlockSize on top of it).
#include "cu_check.h"

__constant__ float weights[256];

__global__ void __launch_bounds__(128) bounded(float *out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = weights[threadIdx.x] * 2.0f;
}

__global__ void static_shared(int *out) {
  __shared__ double s[512];  // 4096 bytes
  for (int i = threadIdx.x; i < 512; i += blockDim.x) s[i] = i * 0.5;
  __syncthreads();
  out[threadIdx.x] = (int)s[(threadIdx.x * 7) % 512];
}

// A per-thread array indexed at run time lives in local memory (volatile keeps it there).
__global__ void uses_local(const int *idx, int *out) {
  volatile int a[64];
  for (int i = 0; i < 64; i++) a[i] = i * threadIdx.x;
  out[threadIdx.x] = a[idx[threadIdx.x] & 63];
}

struct Attr {  // no implicit padding: compared with memcmp and checksummed
  int regs, max_threads, ptx, binary, max_dyn, zero;
  size_t shared, local, constant;
};

static Attr attrs(const char *name, const void *f) {
  cudaFuncAttributes a;
  memset(&a, 0, sizeof a);
  CU_OK(cudaFuncGetAttributes(&a, f));
  printf("ATTR %s regs=%d maxThreads=%d shared=%zu local=%zu const=%zu ptx=%d binary=%d maxDynShared=%d\n", name, a.numRegs,
         a.maxThreadsPerBlock, a.sharedSizeBytes, a.localSizeBytes, a.constSizeBytes, a.ptxVersion, a.binaryVersion,
         a.maxDynamicSharedSizeBytes);
  CU_REQUIRE(a.numRegs > 0 && a.numRegs <= 255, "%s: numRegs %d", name, a.numRegs);
  CU_REQUIRE(a.maxThreadsPerBlock > 0 && a.maxThreadsPerBlock <= 1024, "%s: maxThreadsPerBlock %d", name, a.maxThreadsPerBlock);
  CU_REQUIRE(a.binaryVersion >= 80, "%s: binaryVersion %d", name, a.binaryVersion);
  Attr r;
  memset(&r, 0, sizeof r);
  r.regs = a.numRegs;
  r.max_threads = a.maxThreadsPerBlock;
  r.ptx = a.ptxVersion;
  r.binary = a.binaryVersion;
  r.max_dyn = a.maxDynamicSharedSizeBytes;
  r.shared = a.sharedSizeBytes;
  r.local = a.localSizeBytes;
  r.constant = a.constSizeBytes;
  return r;
}

int main() {
  cu_init("attrs");
  Attr ab = attrs("bounded", (const void *)bounded);
  Attr as = attrs("static_shared", (const void *)static_shared);
  Attr al = attrs("uses_local", (const void *)uses_local);
  CU_REQUIRE(ab.max_threads == 128, "__launch_bounds__(128): maxThreadsPerBlock = %d", ab.max_threads);
  CU_REQUIRE(as.shared == 4096, "static_shared: sharedSizeBytes = %zu", as.shared);
  CU_REQUIRE(ab.shared == 0, "bounded: sharedSizeBytes = %zu", ab.shared);
  // Cached by the runtime after the first call, and the same answer again.
  Attr ab2 = attrs("bounded", (const void *)bounded);
  CU_REQUIRE(memcmp(&ab, &ab2, sizeof ab) == 0, "cudaFuncGetAttributes changed between calls");

  // Setting an attribute is seen by the next query.
  CU_OK(cudaFuncSetAttribute(static_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 8192));
  Attr as2 = attrs("static_shared", (const void *)static_shared);
  CU_REQUIRE(as2.max_dyn == 8192, "maxDynamicSharedSizeBytes after setting 8192: %d", as2.max_dyn);
  CU_OK(cudaFuncSetAttribute(static_shared, cudaFuncAttributePreferredSharedMemoryCarveout, 50));
  // Errors: a negative size, and a host function that is no kernel.
  CU_EXPECT_ERR(cudaFuncSetAttribute(static_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, -1), cudaErrorInvalidValue);
  (void)cudaGetLastError();
  cudaFuncAttributes junk;
  CU_EXPECT_ERR(cudaFuncGetAttributes(&junk, (const void *)&attrs), cudaErrorInvalidDeviceFunction);
  (void)cudaGetLastError();

  int occ[4];
  CU_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ[0], bounded, 128, 0));
  CU_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ[1], static_shared, 256, 0));
  CU_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ[2], static_shared, 256, 8192));
  int min_grid = 0, block = 0;
  CU_OK(cudaOccupancyMaxPotentialBlockSize(&min_grid, &block, uses_local, 0, 0));
  occ[3] = block;
  printf("OCCUPANCY bounded/128=%d static_shared/256=%d static_shared/256+8K=%d potential uses_local: block %d min grid %d\n",
         occ[0], occ[1], occ[2], block, min_grid);
  CU_REQUIRE(occ[0] >= 1 && occ[1] >= 1 && occ[2] >= 1 && occ[2] <= occ[1], "occupancy %d %d %d", occ[0], occ[1], occ[2]);
  CU_REQUIRE(block >= 32 && block <= 1024 && min_grid >= cu_prop.multiProcessorCount, "potential block size %d, min grid %d",
             block, min_grid);

  float *dout;
  int *di, *didx;
  CU_OK(cudaMalloc(&dout, 2 * 128 * sizeof(float)));
  CU_OK(cudaMalloc(&di, 3 * 256 * sizeof(int)));
  CU_OK(cudaMalloc(&didx, 256 * sizeof(int)));
  float w[256];
  int hidx[256];
  for (int i = 0; i < 256; i++) {
    w[i] = (float)i - 100.0f;
    hidx[i] = (i * 37) % 64;
  }
  CU_OK(cudaMemcpyToSymbol(weights, w, sizeof w));
  CU_OK(cudaMemcpy(didx, hidx, sizeof hidx, cudaMemcpyHostToDevice));
  {
    CuParams p;
    p.add(dout);
    cu_expect_launch("_Z7boundedPf", dim3(2), dim3(128), 0, p, "legacy");
    bounded<<<2, 128>>>(dout);
  }
  {
    CuParams p;
    p.add(di);
    cu_expect_launch("_Z13static_sharedPi", dim3(1), dim3(256), 8192, p, "legacy");
    static_shared<<<1, 256, 8192>>>(di);
  }
  {
    CuParams p;
    p.add((const int *)didx);
    p.add(di + 256);
    cu_expect_launch("_Z10uses_localPKiPi", dim3(1), dim3(256), 0, p, "legacy");
    uses_local<<<1, 256>>>(didx, di + 256);
  }
  // More threads than __launch_bounds__ allows: refused at launch.
  bounded<<<1, 256>>>(dout);
  cudaError_t e = cudaGetLastError();
  CU_REQUIRE(e == cudaErrorInvalidConfiguration || e == cudaErrorLaunchOutOfResources || e == cudaErrorInvalidValue,
             "bounded<<<1, 256>>> returned %s", cudaGetErrorName(e));
  printf("over-bounds launch: %s\n", cudaGetErrorName(e));
  cu_sync("attrs");

  {
    float ho[256];
    int hi[512];
    CU_OK(cudaMemcpy(ho, dout, sizeof ho, cudaMemcpyDeviceToHost));
    CU_OK(cudaMemcpy(hi, di, sizeof hi, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 256; i++) {
      CU_REQUIRE(ho[i] == w[i % 128] * 2.0f, "bounded[%d]", i);
      CU_REQUIRE(hi[i] == (int)(((i * 7) % 512) * 0.5), "static_shared[%d]", i);
      CU_REQUIRE(hi[256 + i] == hidx[i] * i, "uses_local[%d]", i);
    }
    cu_result_host("attrs.out", ho, sizeof ho);
    cu_result_host("attrs.int", hi, sizeof hi);
    Attr all[3] = {ab, as2, al};
    cu_result_host("attrs.funcattrs", all, sizeof all);
    cu_result_host("attrs.occupancy", occ, sizeof occ);
  }
  CU_OK(cudaFree(dout));
  CU_OK(cudaFree(di));
  CU_OK(cudaFree(didx));
  return cu_pass();
}

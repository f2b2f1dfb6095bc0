// Launch forms: <<<>>> (nvcc 13: __cudaGetKernel + __cudaLaunchKernel), cudaLaunchKernel,
// cudaLaunchKernelExC (no attributes, and the cooperative attribute), the C++ cudaLaunchKernelEx
// template, cudaLaunchCooperativeKernel with a grid-wide barrier; 3-D grids and blocks; and launch
// configurations the runtime must refuse at the call (nothing reaches the device).
// (The grid barrier is written out with atomics: cooperative_groups.h needs CCCL's headers, which
// the PyPI nvcc set-up does not fetch.)
#include "cu_check.h"

__global__ void tagk(int *out, int tag) {
  unsigned bx = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  unsigned tx = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  unsigned i = bx * (blockDim.x * blockDim.y * blockDim.z) + tx;
  out[i] = tag + (int)i;
}

// Needs every block resident: phase 2 reads what other blocks wrote in phase 1. `bar` starts at 0.
__global__ void coop(int *buf, int *out, int *bar, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) buf[i] = i * 3;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    atomicAdd(bar, 1);
    while (atomicAdd(bar, 0) < (int)gridDim.x) {
    }
  }
  __syncthreads();
  if (i < n) out[i] = ((volatile int *)buf)[(i + blockDim.x) % n] + 1;
}

static const int SLOT = 4096;  // ints per launch's output slot

static void expect_tagk(int *out, int tag, dim3 g, dim3 b, size_t shared, const char *stream) {
  CuParams p;
  p.add(out);
  p.add(tag);
  cu_expect_launch("_Z4tagkPii", g, b, shared, p, stream);
}

int main() {
  cu_init("launch_forms");
  int *d;
  CU_OK(cudaMalloc(&d, 8 * SLOT * sizeof(int)));
  CU_OK(cudaMemset(d, 0xff, 8 * SLOT * sizeof(int)));
  cudaStream_t s;
  CU_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

  // 1. <<<>>> with 3-D grid and block (2*3*2 blocks of 4*4*2 threads = 384).
  dim3 g3(2, 3, 2), b3(4, 4, 2);
  expect_tagk(d, 100000, g3, b3, 0, "legacy");
  tagk<<<g3, b3>>>(d, 100000);
  CU_OK(cudaGetLastError());

  // 2. cudaLaunchKernel, on a stream, with dynamic shared memory the kernel ignores.
  {
    int *out = d + SLOT;
    int tag = 200000;
    void *args[] = {&out, &tag};
    expect_tagk(out, tag, dim3(3), dim3(128), 256, "s");
    CU_OK(cudaLaunchKernel((const void *)tagk, dim3(3), dim3(128), args, 256, s));
  }
  // 3. cudaLaunchKernelExC without attributes.
  {
    int *out = d + 2 * SLOT;
    int tag = 300000;
    void *args[] = {&out, &tag};
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = dim3(2, 2, 1);
    cfg.blockDim = dim3(64, 2, 1);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = s;
    expect_tagk(out, tag, cfg.gridDim, cfg.blockDim, 0, "s");
    CU_OK(cudaLaunchKernelExC(&cfg, (const void *)tagk, args));
  }
  // 4. The C++ template cudaLaunchKernelEx (cuda_runtime.h), typed arguments.
  {
    int *out = d + 3 * SLOT;
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = dim3(1, 1, 4);
    cfg.blockDim = dim3(32, 1, 1);
    cfg.stream = 0;
    expect_tagk(out, 400000, cfg.gridDim, cfg.blockDim, 0, "legacy");
    CU_OK(cudaLaunchKernelEx(&cfg, tagk, out, 400000));
  }
  // 5. cudaLaunchKernelExC with the cooperative attribute, and 6. cudaLaunchCooperativeKernel.
  int per_sm = 0;
  CU_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, coop, 128, 0));
  CU_REQUIRE(per_sm >= 1, "coop: %d blocks per SM", per_sm);
  int blocks = cu_prop.multiProcessorCount;  // one per SM: always resident
  int n = blocks * 128;
  CU_REQUIRE(n <= SLOT, "%d SMs: too many", blocks);
  int *buf = d + 4 * SLOT, *out5 = d + 5 * SLOT, *out6 = d + 6 * SLOT, *bar5 = d + 7 * SLOT, *bar6 = bar5 + 1;
  CU_OK(cudaMemset(bar5, 0, 2 * sizeof(int)));
  {
    void *args[] = {&buf, &out5, &bar5, &n};
    cudaLaunchAttribute attr;
    memset(&attr, 0, sizeof attr);
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    cudaLaunchConfig_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(128);
    cfg.stream = s;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    CuParams p;
    p.add(buf);
    p.add(out5);
    p.add(bar5);
    p.add(n);
    cu_expect_launch("_Z4coopPiS_S_i", cfg.gridDim, cfg.blockDim, 0, p, "s");
    CU_OK(cudaLaunchKernelExC(&cfg, (const void *)coop, args));
  }
  {
    void *args[] = {&buf, &out6, &bar6, &n};
    CuParams p;
    p.add(buf);
    p.add(out6);
    p.add(bar6);
    p.add(n);
    cu_expect_launch("_Z4coopPiS_S_i", dim3(blocks), dim3(128), 0, p, "s");
    CU_OK(cudaLaunchCooperativeKernel((const void *)coop, dim3(blocks), dim3(128), args, 0, s));
  }

  // Refused at the call, with nothing sent: each is cudaErrorInvalidConfiguration, returned by
  // the launch and by cudaGetLastError once.
  tagk<<<1, 2048>>>(d, 0);  // more than 1024 threads per block
  CU_EXPECT_ERR(cudaGetLastError(), cudaErrorInvalidConfiguration);
  CU_OK(cudaGetLastError());
  tagk<<<dim3(1, 70000, 1), 1>>>(d, 0);  // grid y over 65535
  CU_EXPECT_ERR(cudaGetLastError(), cudaErrorInvalidConfiguration);
  tagk<<<dim3(0, 1, 1), 32>>>(d, 0);  // empty grid
  CU_EXPECT_ERR(cudaGetLastError(), cudaErrorInvalidConfiguration);
  {
    int *out = d;
    int tag = 0;
    void *args[] = {&out, &tag};
    CU_EXPECT_ERR(cudaLaunchKernel((const void *)tagk, dim3(1), dim3(32, 32, 2), args, 0, s), cudaErrorInvalidConfiguration);
    (void)cudaGetLastError();
  }
  cu_sync("launch forms");

  {
    static int h[8 * SLOT];
    CU_OK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    const int counts[4] = {384, 384, 512, 128};
    for (int k = 0; k < 4; k++) {
      for (int i = 0; i < SLOT; i++) {
        int want = i < counts[k] ? (k + 1) * 100000 + i : -1;
        CU_REQUIRE(h[k * SLOT + i] == want, "form %d [%d] = %d, expected %d", k + 1, i, h[k * SLOT + i], want);
      }
    }
    for (int i = 0; i < n; i++) {
      int want = ((i + 128) % n) * 3 + 1;
      CU_REQUIRE(h[5 * SLOT + i] == want && h[6 * SLOT + i] == want, "coop [%d] = %d / %d, expected %d", i, h[5 * SLOT + i],
                 h[6 * SLOT + i], want);
    }
    cu_result_host("launch_forms.tagk", h, 4 * SLOT * sizeof(int));
    printf("RESULT launch_forms.coop %016llx\n", (unsigned long long)cu_fnv(h + 5 * SLOT, n * sizeof(int)));
  }
  CU_OK(cudaStreamDestroy(s));
  CU_OK(cudaFree(d));
  return cu_pass();
}

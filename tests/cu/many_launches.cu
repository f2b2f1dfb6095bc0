// Thousands of tiny kernels: 5000 launches, four in five on a non-blocking stream and every fifth on
// the legacy default stream, each with its own parameters; one synchronisation at the end.
#include <chrono>

#include "cu_check.h"

__global__ void tiny(unsigned *out, int i, unsigned v) { out[i] = v + threadIdx.x; }

static const int LAUNCHES = 5000;

int main() {
  cu_init("many_launches");
  unsigned *d;
  CU_OK(cudaMalloc(&d, LAUNCHES * sizeof(unsigned)));
  CU_OK(cudaMemset(d, 0, LAUNCHES * sizeof(unsigned)));
  cudaStream_t s;
  CU_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < LAUNCHES; i++) {
    unsigned v = (unsigned)i * 2654435761u;
    bool legacy = i % 5 == 4;
    CuParams p;
    p.add(d);
    p.add(i);
    p.add(v);
    cu_expect_launch("_Z4tinyPjij", dim3(1), dim3(1), 0, p, legacy ? "legacy" : "s");
    tiny<<<1, 1, 0, legacy ? (cudaStream_t)0 : s>>>(d, i, v);
  }
  auto t1 = std::chrono::steady_clock::now();
  cu_sync("many launches");
  auto t2 = std::chrono::steady_clock::now();
  double enq = std::chrono::duration<double>(t1 - t0).count(), all = std::chrono::duration<double>(t2 - t0).count();
  printf("%d launches: %.0f/s enqueued (printing included), %.0f/s with the final sync\n", LAUNCHES, LAUNCHES / enq,
         LAUNCHES / all);
  {
    static unsigned h[LAUNCHES];
    CU_OK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    for (int i = 0; i < LAUNCHES; i++) CU_REQUIRE(h[i] == (unsigned)i * 2654435761u, "tiny[%d] = %u", i, h[i]);
    cu_result_host("many_launches.out", h, sizeof h);
  }
  CU_OK(cudaStreamDestroy(s));
  CU_OK(cudaFree(d));
  return cu_pass();
}

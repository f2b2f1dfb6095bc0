/* cudaMemGetInfo tracks allocations: free drops by at least the size of an allocation and comes
 * back when it is freed; total does not change. */
#include "check.h"

int main(void) {
  size_t free0 = 0, total0 = 0, free1 = 0, total1 = 0, free2 = 0, total2 = 0;
  OK(cudaMemGetInfo(&free0, &total0));
  CHECK(total0 > 0 && free0 <= total0);
  const size_t n = 256u << 20;
  void *d = NULL;
  OK(cudaMalloc(&d, n));
  OK(cudaMemGetInfo(&free1, &total1));
  CHECK(total1 == total0);
  CHECK(free1 + n <= free0);
  OK(cudaFree(d));
  OK(cudaMemGetInfo(&free2, &total2));
  CHECK(total2 == total0);
  CHECK(free2 == free0);
  /* More than the device has: cudaErrorMemoryAllocation, and the device still works. */
  EXPECT(cudaMalloc(&d, total0 + (1u << 30)), cudaErrorMemoryAllocation);
  CHECK(cudaGetLastError() == cudaErrorMemoryAllocation);
  OK(cudaMalloc(&d, 4096));
  OK(cudaFree(d));
  PASS("meminfo");
}

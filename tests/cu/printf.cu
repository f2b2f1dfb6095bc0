// Device printf: the output of a kernel's printf reaches the program's stdout by the next
// synchronising call, as CUDA's does (tests/kernels.rs checks the order of the lines).
#include "cu_check.h"

__global__ void hello(int tag) {
  printf("device %d: thread %d of block %d, %.2f %s\n", tag, (int)threadIdx.x, (int)blockIdx.x, 0.5f * threadIdx.x,
         threadIdx.x == 0 ? "first" : "other");
}

int main() {
  cu_init("printf");
  hello<<<2, 2>>>(7);
  printf("host: before the sync\n");
  fflush(stdout);
  CU_OK(cudaDeviceSynchronize());
  printf("host: after the sync\n");
  return cu_pass();
}

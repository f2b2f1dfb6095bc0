/* Loading the library does nothing, and calls that need no device work without a mediator;
 * the first call that needs one fails with cudaErrorNoDevice (run with VGPU_SOCKET naming a path
 * where nothing listens). */
#include "check.h"

int main(void) {
  CHECK(strcmp(cudaGetErrorString(cudaErrorNoDevice), "no CUDA-capable device is detected") == 0);
  int v = 0;
  OK(cudaRuntimeGetVersion(&v));
  CHECK(v == CUDART_VERSION);
  int n = 5;
  EXPECT(cudaGetDeviceCount(&n), cudaErrorNoDevice);
  void *d = NULL;
  EXPECT(cudaMalloc(&d, 64), cudaErrorNoDevice);
  CHECK(cudaGetLastError() == cudaErrorNoDevice);
  PASS("no_mediator");
}

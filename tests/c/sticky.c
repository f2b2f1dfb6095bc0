/* Error stickiness. Ordinary errors are returned once and recorded as the thread's last error,
 * which cudaGetLastError clears and cudaPeekAtLastError does not; they never poison later calls.
 * Losing the device (here: the mediator, killed by this program) is sticky: every later call
 * returns the same error and nothing clears it. VGPU_MEDIATOR_PID names a private mediator. */
#include <signal.h>
#include <unistd.h>
#include "check.h"

int main(void) {
  void *d = NULL;
  OK(cudaMalloc(&d, 1 << 20));
  /* Past the end of the allocation. CUDA returns the error from the call itself; vgpu may defer
   * it to the next synchronising call (cudart-abi/NEEDS.md item 7). Either way it surfaces once. */
  cudaError_t e1 = cudaMemset(d, 0, 2 << 20);
  cudaError_t e2 = cudaDeviceSynchronize();
  printf("memset past the end: %s, then %s\n", cudaGetErrorName(e1), cudaGetErrorName(e2));
  CHECK((e1 == cudaErrorInvalidValue && e2 == cudaSuccess) || (e1 == cudaSuccess && e2 != cudaSuccess));
  cudaError_t bad = e1 != cudaSuccess ? e1 : e2;
  CHECK(cudaPeekAtLastError() == bad);
  CHECK(cudaPeekAtLastError() == bad);
  CHECK(cudaGetLastError() == bad);
  CHECK(cudaGetLastError() == cudaSuccess);
  OK(cudaDeviceSynchronize()); /* returned once, not again */
  OK(cudaMemset(d, 1, 1 << 20)); /* the device still works */
  OK(cudaDeviceSynchronize());

  const char *pid = getenv("VGPU_MEDIATOR_PID");
  if (pid == NULL) {
    fprintf(stderr, "VGPU_MEDIATOR_PID is not set\n");
    return 1;
  }
  CHECK(kill((pid_t)atoi(pid), SIGKILL) == 0);
  /* Within the protocol's liveness deadline every call fails. */
  cudaError_t e = cudaSuccess;
  for (int i = 0; i < 400 && e == cudaSuccess; i++) {
    e = cudaDeviceSynchronize();
    if (e == cudaSuccess) usleep(10000);
  }
  CHECK(e != cudaSuccess);
  printf("after losing the mediator: %s\n", cudaGetErrorName(e));
  EXPECT(cudaMalloc(&d, 64), e);
  EXPECT(cudaDeviceSynchronize(), e);
  CHECK(cudaGetLastError() == e);
  CHECK(cudaGetLastError() == e); /* not cleared */
  CHECK(cudaPeekAtLastError() == e);
  PASS("sticky");
}

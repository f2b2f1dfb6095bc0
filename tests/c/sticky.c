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
  /* Past the end of the allocation: CUDA returns the error from the call itself, and nothing
   * is left for the next synchronising call. */
  EXPECT(cudaMemset(d, 0, 2 << 20), cudaErrorInvalidValue);
  OK(cudaDeviceSynchronize());
  EXPECT(cudaMemsetAsync((char *)d + 1, 0, 1 << 20, 0), cudaErrorInvalidValue);
  EXPECT(cudaMemcpy(d, d, (1 << 20) + 1, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);
  char host[64];
  EXPECT(cudaMemcpy(host, (char *)d - 64, 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  static char rows[64 * 1025]; /* 1025 rows of 64 bytes, 1024 bytes apart on the device: past the end */
  EXPECT(cudaMemcpy2D(d, 1024, rows, 64, 64, 1025, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  OK(cudaDeviceSynchronize());
  cudaError_t bad = cudaErrorInvalidValue;
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

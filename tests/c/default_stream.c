/* Legacy default-stream ordering: work on the NULL stream waits for earlier work on blocking
 * streams, and later work on blocking streams waits for it; a non-blocking stream does not. */
#include "check.h"

#define N (32u << 20)
#define BACKLOG 24

int main(void) {
  unsigned char *d = NULL;
  OK(cudaMalloc((void **)&d, N));
  cudaStream_t s;
  OK(cudaStreamCreate(&s));
  unsigned int flags = 99;
  OK(cudaStreamGetFlags(s, &flags));
  CHECK(flags == cudaStreamDefault);

  /* A backlog on the blocking stream, then one memset on the NULL stream: the NULL stream's
   * memset must run after the whole backlog, so the buffer ends up 0x22. */
  for (int i = 0; i < BACKLOG; i++) OK(cudaMemsetAsync(d, 0x11, N, s));
  OK(cudaMemsetAsync(d, 0x22, N, 0));
  /* Work queued on the blocking stream after it runs after it. */
  OK(cudaMemsetAsync(d, 0x33, 4096, s));
  unsigned char *h = malloc(N);
  OK(cudaStreamSynchronize(s));
  OK(cudaMemcpy(h, d, N, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < 4096; i++) CHECK(h[i] == 0x33);
  for (size_t i = 4096; i < N; i += 4093) CHECK(h[i] == 0x22);
  CHECK(h[N - 1] == 0x22);

  /* cudaStreamLegacy behaves as the NULL stream. */
  for (int i = 0; i < BACKLOG; i++) OK(cudaMemsetAsync(d, 0x44, N, s));
  OK(cudaMemsetAsync(d, 0x55, N, cudaStreamLegacy));
  OK(cudaMemcpy(h, d, N, cudaMemcpyDeviceToHost));
  CHECK(h[0] == 0x55 && h[N / 2] == 0x55 && h[N - 1] == 0x55);

  OK(cudaStreamDestroy(s));
  OK(cudaFree(d));
  free(h);
  PASS("default_stream");
}

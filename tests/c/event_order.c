/* Event ordering across streams: a stream that waits on an event recorded on another stream
 * runs its later work only after the work the event captured; queries, sync and timing. */
#include "check.h"

#define N (32u << 20)
#define BACKLOG 24

int main(void) {
  unsigned char *d = NULL;
  OK(cudaMalloc((void **)&d, N));
  cudaStream_t a, b;
  OK(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
  OK(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
  cudaEvent_t start, done, never;
  OK(cudaEventCreate(&start));
  OK(cudaEventCreate(&done));
  OK(cudaEventCreateWithFlags(&never, cudaEventDisableTiming));
  EXPECT(cudaEventCreateWithFlags(&never, 0x80), cudaErrorInvalidValue);

  /* A never-recorded event is complete. */
  OK(cudaEventQuery(never));
  OK(cudaEventSynchronize(never));

  OK(cudaEventRecord(start, a));
  for (int i = 0; i < BACKLOG; i++) OK(cudaMemsetAsync(d, 0x11, N, a));
  OK(cudaEventRecord(done, a));
  OK(cudaStreamWaitEvent(b, done, 0));
  OK(cudaMemsetAsync(d, 0x22, N, b));

  unsigned char *h = malloc(N);
  OK(cudaMemcpyAsync(h, d, N, cudaMemcpyDeviceToHost, b));
  OK(cudaStreamSynchronize(b));
  /* b's memset ran after every memset of a's backlog. */
  CHECK(h[0] == 0x22 && h[N / 3] == 0x22 && h[N - 1] == 0x22);
  /* ... so `done` has completed too. */
  OK(cudaEventQuery(done));
  OK(cudaStreamQuery(a));

  float ms = -1.0f;
  OK(cudaEventElapsedTime(&ms, start, done));
  CHECK(ms >= 0.0f);
  EXPECT(cudaEventElapsedTime(&ms, start, never), cudaErrorInvalidResourceHandle);
  CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle); /* the latest error, now cleared */

  /* A pending event answers cudaErrorNotReady (not an error: not recorded as the last error). */
  for (int i = 0; i < BACKLOG; i++) OK(cudaMemsetAsync(d, 0x33, N, a));
  OK(cudaEventRecord(done, a));
  cudaError_t q = cudaEventQuery(done);
  CHECK(q == cudaErrorNotReady || q == cudaSuccess);
  OK(cudaEventSynchronize(done));
  OK(cudaEventQuery(done));
  CHECK(cudaGetLastError() == cudaSuccess);

  OK(cudaEventDestroy(start));
  OK(cudaEventDestroy(done));
  OK(cudaEventDestroy(never));
  OK(cudaStreamDestroy(a));
  OK(cudaStreamDestroy(b));
  OK(cudaFree(d));
  free(h);
  PASS("event_order");
}

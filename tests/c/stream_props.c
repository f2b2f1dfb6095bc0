/* Stream properties and the smaller calls: priorities, flags, queries, capture status, peer
 * copies on one device, host registration. */
#include "check.h"

#define N (32u << 20)

int main(void) {
  int least = 0, greatest = 0;
  OK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  cudaStream_t hi, lo;
  OK(cudaStreamCreateWithPriority(&hi, cudaStreamNonBlocking, greatest));
  OK(cudaStreamCreateWithPriority(&lo, cudaStreamDefault, least));
  int p = 12345;
  unsigned int f = 12345;
  OK(cudaStreamGetPriority(hi, &p));
  CHECK(p == greatest);
  OK(cudaStreamGetPriority(lo, &p));
  CHECK(p == least);
  OK(cudaStreamGetFlags(hi, &f));
  CHECK(f == cudaStreamNonBlocking);
  OK(cudaStreamGetFlags(lo, &f));
  CHECK(f == cudaStreamDefault);
  EXPECT(cudaStreamGetPriority(hi, NULL), cudaErrorInvalidValue);
  EXPECT(cudaStreamCreateWithFlags(&hi, 0x10), cudaErrorInvalidValue);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);

  enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusActive;
  OK(cudaStreamIsCapturing(lo, &cs));
  CHECK(cs == cudaStreamCaptureStatusNone);

  /* cudaStreamQuery: NotReady while a backlog runs (not recorded as an error), Success after. */
  unsigned char *a = NULL, *b = NULL;
  OK(cudaMalloc((void **)&a, N));
  OK(cudaMalloc((void **)&b, N));
  for (int i = 0; i < 16; i++) OK(cudaMemsetAsync(a, 0x61 + i, N, lo));
  cudaError_t q = cudaStreamQuery(lo);
  CHECK(q == cudaErrorNotReady || q == cudaSuccess);
  /* CUDA answers cudaSuccess at once for a stream whose sync returned, every time. */
  for (int i = 0; i < 20; i++) {
    OK(cudaMemsetAsync(a, 0x61 + 15, N, lo));
    OK(cudaStreamSynchronize(lo));
    OK(cudaStreamQuery(lo));
  }
  CHECK(cudaGetLastError() == cudaSuccess);

  /* Peer copies on the one device are plain device-to-device copies; other devices are invalid. */
  int can = 7;
  OK(cudaDeviceCanAccessPeer(&can, 0, 0));
  CHECK(can == 0);
  EXPECT(cudaDeviceCanAccessPeer(&can, 0, 1), cudaErrorInvalidDevice);
  OK(cudaMemcpyPeer(b, 0, a, 0, N));
  unsigned char *h = malloc(N);
  OK(cudaMemcpy(h, b, N, cudaMemcpyDeviceToHost));
  CHECK(h[0] == 0x61 + 15 && h[N - 1] == 0x61 + 15);
  OK(cudaMemsetAsync(a, 0x7e, N, hi));
  OK(cudaMemcpyPeerAsync(b, 0, a, 0, N, hi));
  OK(cudaMemcpyAsync(h, b, N, cudaMemcpyDeviceToHost, hi));
  OK(cudaStreamSynchronize(hi));
  CHECK(h[0] == 0x7e && h[N / 2] == 0x7e);
  EXPECT(cudaMemcpyPeer(b, 1, a, 0, N), cudaErrorInvalidDevice);

  /* Registered host memory behaves as pageable memory for copies. */
  OK(cudaHostRegister(h, N, cudaHostRegisterDefault));
  memset(h, 0x15, N);
  OK(cudaMemcpyAsync(a, h, N, cudaMemcpyHostToDevice, hi));
  memset(h, 0, N);
  OK(cudaMemcpyAsync(h, a, N, cudaMemcpyDeviceToHost, hi));
  OK(cudaStreamSynchronize(hi));
  CHECK(h[0] == 0x15 && h[N - 1] == 0x15);
  OK(cudaHostUnregister(h));
  EXPECT(cudaHostUnregister(h), cudaErrorHostMemoryNotRegistered);

  /* An unsupported call: cudaErrorNotSupported, recorded as the last error. */
  EXPECT(cudaMallocManaged((void **)&b, 64, cudaMemAttachGlobal), cudaErrorNotSupported);
  CHECK(cudaGetLastError() == cudaErrorNotSupported);

  OK(cudaStreamDestroy(hi));
  OK(cudaStreamDestroy(lo));
  OK(cudaFree(a));
  OK(cudaFree(b));
  free(h);
  PASS("stream_props");
}

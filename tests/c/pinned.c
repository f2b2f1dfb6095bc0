/* Pinned host memory: 256-byte alignment, zero-copy async round trips, cudaFreeHost rules,
 * pointer attributes. */
#include <stdint.h>
#include "check.h"

int main(void) {
  const size_t sizes[] = {1, 3, 255, 256, 257, 4096, 12345, 1u << 20};
  void *p[8];
  for (int i = 0; i < 8; i++) {
    p[i] = NULL;
    OK(cudaMallocHost(&p[i], sizes[i]));
    CHECK(p[i] != NULL);
    CHECK(((uintptr_t)p[i] & 255) == 0);
    memset(p[i], i + 1, sizes[i]); /* writable */
  }
  void *q = NULL;
  OK(cudaHostAlloc(&q, 1000, cudaHostAllocPortable));
  CHECK(((uintptr_t)q & 255) == 0);
  EXPECT(cudaHostAlloc(&q, 1000, 0x40), cudaErrorInvalidValue);

  struct cudaPointerAttributes attr;
  OK(cudaPointerGetAttributes(&attr, p[7]));
  CHECK(attr.type == cudaMemoryTypeHost);
  CHECK(attr.hostPointer == p[7]);

  /* A zero-copy round trip through pinned memory on a stream. */
  const size_t n = 1u << 20;
  unsigned char *a = p[7], *b = NULL;
  OK(cudaMallocHost((void **)&b, n));
  for (size_t i = 0; i < n; i++) a[i] = (unsigned char)(i * 7 + 1);
  void *d = NULL;
  OK(cudaMalloc(&d, n));
  cudaStream_t s;
  OK(cudaStreamCreate(&s));
  OK(cudaMemcpyAsync(d, a, n, cudaMemcpyHostToDevice, s));
  OK(cudaMemcpyAsync(b, d, n, cudaMemcpyDeviceToHost, s));
  OK(cudaStreamSynchronize(s));
  CHECK(memcmp(a, b, n) == 0);

  /* Freeing: pinned pointers only; NULL is fine. */
  char stack_buf[16];
  EXPECT(cudaFreeHost(stack_buf), cudaErrorInvalidValue);
  OK(cudaFreeHost(NULL));
  for (int i = 0; i < 8; i++) OK(cudaFreeHost(p[i]));
  OK(cudaFreeHost(q));
  OK(cudaFreeHost(b));
  OK(cudaStreamDestroy(s));
  OK(cudaFree(d));
  PASS("pinned");
}

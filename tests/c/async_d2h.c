/* Async device-to-host copies into pageable memory: the bytes are in the user's buffer when the
 * stream (or an event recorded after the copy, or the device) is synchronised. Sizes that span
 * several staging chunks and odd sizes; 2D copies with pitches. */
#include "check.h"

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)((i * 131u + seed * 7u) >> 3);
}

int main(void) {
  const size_t sizes[] = {1, 4095, 4097, 1u << 20, (3u << 20) + 17, 9u << 20};
  cudaStream_t s;
  OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t ev;
  OK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  for (unsigned k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t n = sizes[k];
    unsigned char *src = malloc(n), *dst = malloc(n);
    fill(src, n, k);
    memset(dst, 0, n);
    void *d = NULL;
    OK(cudaMalloc(&d, n));
    OK(cudaMemcpyAsync(d, src, n, cudaMemcpyHostToDevice, s));
    OK(cudaMemcpyAsync(dst, d, n, cudaMemcpyDeviceToHost, s));
    if (k % 3 == 0) {
      OK(cudaStreamSynchronize(s));
    } else if (k % 3 == 1) {
      OK(cudaEventRecord(ev, s));
      OK(cudaEventSynchronize(ev));
    } else {
      OK(cudaDeviceSynchronize());
    }
    if (memcmp(src, dst, n) != 0) {
      fprintf(stderr, "size %zu: bytes differ after sync\n", n);
      return 1;
    }
    /* cudaMemcpyDefault infers the direction from the pointers (unified addressing). */
    memset(dst, 0, n);
    OK(cudaMemcpy(dst, d, n, cudaMemcpyDefault));
    CHECK(memcmp(src, dst, n) == 0);
    OK(cudaFree(d));
    free(src);
    free(dst);
  }

  /* CUDA documents that an async D2H copy into pageable memory returns only once the copy has
   * completed: the bytes are readable with no sync at all, even behind queued work. */
  {
    size_t n = (5u << 20) + 3;
    unsigned char *src = malloc(n), *dst = calloc(n, 1);
    fill(src, n, 42);
    void *d = NULL, *big = NULL;
    OK(cudaMalloc(&d, n));
    OK(cudaMalloc(&big, 64u << 20));
    OK(cudaMemcpy(d, src, n, cudaMemcpyHostToDevice));
    for (int i = 0; i < 8; i++) OK(cudaMemsetAsync(big, i, 64u << 20, s));
    OK(cudaMemcpyAsync(dst, d, n, cudaMemcpyDeviceToHost, s));
    if (memcmp(src, dst, n) != 0) {
      fprintf(stderr, "pageable async D2H returned before its bytes were in place\n");
      return 1;
    }
    OK(cudaStreamSynchronize(s));
    OK(cudaFree(big));
    OK(cudaFree(d));
    free(src);
    free(dst);
  }

  /* 2D: 37 rows of 100 bytes, host pitch 128, device pitch 256, back to host pitch 112. */
  const size_t w = 100, hgt = 37, hp = 128, dp = 256, hp2 = 112;
  unsigned char *src = malloc(hp * hgt), *dst = calloc(hp2 * hgt, 1);
  fill(src, hp * hgt, 9);
  void *d = NULL;
  OK(cudaMalloc(&d, dp * hgt));
  OK(cudaMemcpy2DAsync(d, dp, src, hp, w, hgt, cudaMemcpyHostToDevice, s));
  OK(cudaMemcpy2DAsync(dst, hp2, d, dp, w, hgt, cudaMemcpyDeviceToHost, s));
  OK(cudaStreamSynchronize(s));
  for (size_t r = 0; r < hgt; r++) CHECK(memcmp(src + r * hp, dst + r * hp2, w) == 0);
  memset(dst, 0, hp2 * hgt);
  OK(cudaMemcpy2D(dst, hp2, d, dp, w, hgt, cudaMemcpyDeviceToHost));
  for (size_t r = 0; r < hgt; r++) CHECK(memcmp(src + r * hp, dst + r * hp2, w) == 0);
  EXPECT(cudaMemcpy2D(dst, 50, d, dp, w, hgt, cudaMemcpyDeviceToHost), cudaErrorInvalidPitchValue);
  OK(cudaFree(d));
  free(src);
  free(dst);
  OK(cudaEventDestroy(ev));
  OK(cudaStreamDestroy(s));
  PASS("async_d2h");
}

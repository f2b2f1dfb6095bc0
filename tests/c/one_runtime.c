/* One runtime per process: linked against libcudart.so.13, it also dlopen()s libcudart.so.12 and
 * uses both on the same memory, streams and thread state. Allocates with one, copies and frees
 * with the other, checks the bytes; a stream made by one is used by the other; an error recorded
 * through one is the last error the other reports. Between the work and the frees it prints
 * "ready" and waits for a line on stdin, so the harness (tests/cudart.rs) can count this
 * process's sessions in `vgpu stat`: exactly one. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <unistd.h>

#include "check.h"

typedef cudaError_t (*memcpy_fn)(void *, const void *, size_t, enum cudaMemcpyKind);
typedef cudaError_t (*memcpy_async_fn)(void *, const void *, size_t, enum cudaMemcpyKind, cudaStream_t);
typedef cudaError_t (*free_fn)(void *);
typedef cudaError_t (*malloc_fn)(void **, size_t);
typedef cudaError_t (*stream_create_fn)(cudaStream_t *);
typedef cudaError_t (*stream_fn)(cudaStream_t);
typedef cudaError_t (*last_error_fn)(void);
typedef cudaError_t (*version_fn)(int *);

static void *sym(void *h, const char *name) {
  void *p = dlsym(h, name);
  if (!p) {
    fprintf(stderr, "dlsym(libcudart.so.12, %s): %s\n", name, dlerror());
    exit(1);
  }
  return p;
}

int main(void) {
  void *h12 = dlopen("libcudart.so.12", RTLD_NOW | RTLD_LOCAL);
  if (!h12) {
    fprintf(stderr, "dlopen(libcudart.so.12): %s\n", dlerror());
    return 1;
  }
  memcpy_fn memcpy12 = (memcpy_fn)sym(h12, "cudaMemcpy");
  memcpy_async_fn memcpy_async12 = (memcpy_async_fn)sym(h12, "cudaMemcpyAsync");
  free_fn free12 = (free_fn)sym(h12, "cudaFree");
  malloc_fn malloc12 = (malloc_fn)sym(h12, "cudaMalloc");
  stream_create_fn stream_create12 = (stream_create_fn)sym(h12, "cudaStreamCreate");
  stream_fn stream_destroy12 = (stream_fn)sym(h12, "cudaStreamDestroy");
  last_error_fn last_error12 = (last_error_fn)sym(h12, "cudaGetLastError");
  version_fn version12 = (version_fn)sym(h12, "cudaRuntimeGetVersion");

  /* Two facades really are loaded: each reports its own version. */
  int v12 = 0, v13 = 0;
  OK(version12(&v12));
  OK(cudaRuntimeGetVersion(&v13));
  CHECK(v12 / 1000 == 12 && v13 / 1000 == 13);

  enum { N = 1 << 20 };
  unsigned char *src = malloc(N), *dst = malloc(N);
  CHECK(src && dst);
  for (size_t i = 0; i < N; i++) src[i] = (unsigned char)(i * 131 + 7);

  /* Allocated by .13, written by .12, read back by .13. */
  void *d = NULL;
  OK(cudaMalloc(&d, N));
  OK(memcpy12(d, src, N, cudaMemcpyHostToDevice));
  memset(dst, 0, N);
  OK(cudaMemcpy(dst, d, N, cudaMemcpyDeviceToHost));
  CHECK(memcmp(src, dst, N) == 0);

  /* Allocated by .12, written by .13 on a stream .12 created, read back by .12 on it. */
  void *d2 = NULL;
  OK(malloc12(&d2, N));
  cudaStream_t s = NULL;
  OK(stream_create12(&s));
  for (size_t i = 0; i < N; i++) src[i] = (unsigned char)(i * 7 + 3);
  OK(cudaMemcpyAsync(d2, src, N, cudaMemcpyHostToDevice, s));
  memset(dst, 0, N);
  OK(memcpy_async12(dst, d2, N, cudaMemcpyDeviceToHost, s));
  OK(cudaStreamSynchronize(s));
  CHECK(memcmp(src, dst, N) == 0);

  /* One thread state: an error recorded through .12 is .13's last error (and then cleared). */
  (void)cudaGetLastError();
  EXPECT(memcpy12(dst, d2, N, (enum cudaMemcpyKind)42), cudaErrorInvalidMemcpyDirection);
  EXPECT(cudaGetLastError(), cudaErrorInvalidMemcpyDirection);
  EXPECT(last_error12(), cudaSuccess);

  printf("ready %d\n", (int)getpid());
  fflush(stdout);
  char line[16];
  if (!fgets(line, sizeof line, stdin)) {
    fprintf(stderr, "stdin closed before the go-ahead\n");
    return 1;
  }

  /* Freed by the other library than the one that allocated. */
  OK(free12(d));
  OK(cudaFree(d2));
  OK(stream_destroy12(s));
  CHECK(cudaFree(d) != cudaSuccess); /* already freed, through the other library */
  (void)cudaGetLastError();
  free(src);
  free(dst);
  PASS("one_runtime");
}

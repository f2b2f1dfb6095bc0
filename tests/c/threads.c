/* Eight threads at once, each with its own streams, events and buffers, plus the per-thread
 * default stream: every round trip returns exactly its own bytes. */
#include <pthread.h>
#include "check.h"

#define THREADS 8
#define ITERS 40

static int failures;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static void fail_at(int t, int it, const char *what, cudaError_t e) {
  pthread_mutex_lock(&mu);
  fprintf(stderr, "thread %d iteration %d: %s: %s\n", t, it, what, cudaGetErrorName(e));
  failures++;
  pthread_mutex_unlock(&mu);
}

#define T(call)                                     \
  do {                                              \
    cudaError_t e_ = (call);                        \
    if (e_ != cudaSuccess) {                        \
      fail_at(t, it, #call, e_);                    \
      return NULL;                                  \
    }                                               \
  } while (0)

static void *worker(void *arg) {
  int t = (int)(size_t)arg, it = -1;
  cudaStream_t s;
  T(cudaStreamCreateWithFlags(&s, t % 2 ? cudaStreamNonBlocking : cudaStreamDefault));
  cudaEvent_t ev;
  T(cudaEventCreate(&ev));
  for (it = 0; it < ITERS; it++) {
    size_t n = 1000 + (size_t)(t * 7919 + it * 104729) % (300 * 1024);
    unsigned char *src = malloc(n), *dst = malloc(n);
    for (size_t i = 0; i < n; i++) src[i] = (unsigned char)(t * 31 + it * 17 + i);
    void *a = NULL, *b = NULL;
    T(cudaMalloc(&a, n));
    T(cudaMalloc(&b, n));
    cudaStream_t use = it % 3 == 2 ? cudaStreamPerThread : s;
    T(cudaMemcpyAsync(a, src, n, cudaMemcpyHostToDevice, use));
    T(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, use));
    T(cudaMemcpyAsync(dst, b, n, cudaMemcpyDeviceToHost, use));
    T(cudaEventRecord(ev, use));
    T(cudaEventSynchronize(ev));
    if (memcmp(src, dst, n) != 0) {
      fail_at(t, it, "bytes differ", cudaSuccess);
      return NULL;
    }
    T(cudaFree(a));
    T(cudaFree(b));
    free(src);
    free(dst);
  }
  T(cudaEventDestroy(ev));
  T(cudaStreamDestroy(s));
  return NULL;
}

int main(void) {
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) CHECK(pthread_create(&th[i], NULL, worker, (void *)(size_t)i) == 0);
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  CHECK(failures == 0);
  PASS("threads");
}

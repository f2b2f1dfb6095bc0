/* Host functions and stream callbacks run in stream order: after the work queued before them,
 * before the work queued after them, in the order they were queued. */
#include <pthread.h>
#include "check.h"

#define N (16u << 20)

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int order[16];
static int count;
static cudaError_t cb_status = (cudaError_t)-1;

static void note(int v) {
  pthread_mutex_lock(&mu);
  if (count < 16) order[count] = v;
  count++;
  pthread_mutex_unlock(&mu);
}

static void CUDART_CB host_fn(void *arg) { note((int)(size_t)arg); }

static void CUDART_CB callback(cudaStream_t s, cudaError_t status, void *arg) {
  (void)s;
  cb_status = status;
  note((int)(size_t)arg);
}

int main(void) {
  cudaStream_t s;
  OK(cudaStreamCreate(&s));
  unsigned char *d = NULL;
  OK(cudaMalloc((void **)&d, N));
  for (int i = 0; i < 8; i++) OK(cudaMemsetAsync(d, i, N, s));
  OK(cudaLaunchHostFunc(s, host_fn, (void *)1));
  OK(cudaMemsetAsync(d, 0x5a, N, s));
  OK(cudaLaunchHostFunc(s, host_fn, (void *)2));
  OK(cudaStreamAddCallback(s, callback, (void *)3, 0));
  OK(cudaLaunchHostFunc(s, host_fn, (void *)4));
  EXPECT(cudaStreamAddCallback(s, callback, NULL, 1), cudaErrorInvalidValue);
  OK(cudaStreamSynchronize(s));
  CHECK(count == 4);
  for (int i = 0; i < 4; i++) CHECK(order[i] == i + 1);
  CHECK(cb_status == cudaSuccess);

  /* A host function on the NULL stream runs after the earlier copy has landed. */
  unsigned char *h = malloc(N);
  OK(cudaMemcpyAsync(h, d, N, cudaMemcpyDeviceToHost, 0));
  OK(cudaLaunchHostFunc(0, host_fn, (void *)5));
  OK(cudaDeviceSynchronize());
  CHECK(count == 5 && order[4] == 5);
  CHECK(h[0] == 0x5a && h[N - 1] == 0x5a);

  OK(cudaStreamDestroy(s));
  OK(cudaFree(d));
  free(h);
  PASS("host_func");
}

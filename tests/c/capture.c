/* Stream capture and graphs through the C ABI, without kernels: capture state and ids, this
 * version's cudaStreamGetCaptureInfo forms, cudaThreadExchangeStreamCaptureMode, what invalidates
 * a capture (with CUDA's errors), and a graph of a memset and copies that is instantiated
 * (three ways), updated and replayed. */
#include "check.h"

/* Status and id through every cudaStreamGetCaptureInfo form the headers of this version offer. */
static void info(cudaStream_t s, enum cudaStreamCaptureStatus *st, unsigned long long *id) {
  cudaGraph_t g = (cudaGraph_t)1;
  const cudaGraphNode_t *deps = (const cudaGraphNode_t *)1;
  const cudaGraphEdgeData *edges = (const cudaGraphEdgeData *)1;
  size_t n = 99;
#if CUDART_VERSION >= 13000
  OK(cudaStreamGetCaptureInfo(s, st, id, &g, &deps, &edges, &n));
#else
  /* The 12.x header maps the plain name to _v2 (the exported plain name is the 3-argument form). */
  OK(cudaStreamGetCaptureInfo(s, st, id, &g, &deps, &n));
  enum cudaStreamCaptureStatus st3 = cudaStreamCaptureStatusNone;
  unsigned long long id3 = 0;
  OK(cudaStreamGetCaptureInfo_v3(s, &st3, &id3, &g, &deps, &edges, &n));
  CHECK(st3 == *st);
  CHECK(*st == cudaStreamCaptureStatusNone || id3 == *id);
#endif
  if (*st != cudaStreamCaptureStatusNone) {
    CHECK(n == 0);
    CHECK(deps == NULL);
  }
#if CUDART_VERSION >= 13000
  EXPECT(cudaStreamGetCaptureInfo(s, NULL, NULL, NULL, NULL, NULL, NULL), cudaErrorInvalidValue);
#else
  EXPECT(cudaStreamGetCaptureInfo(s, NULL, NULL, NULL, NULL, NULL), cudaErrorInvalidValue);
#endif
}

int main(void) {
  cudaStream_t s, nb;
  OK(cudaStreamCreate(&s));
  OK(cudaStreamCreateWithFlags(&nb, cudaStreamNonBlocking));
  char *a = NULL, *b = NULL, *pinned = NULL;
  OK(cudaMalloc((void **)&a, 4096));
  OK(cudaMalloc((void **)&b, 4096));
  OK(cudaMallocHost((void **)&pinned, 4096));
  static char host[64];
  enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusActive;
  unsigned long long id1 = 0, id2 = 0;
  cudaGraph_t g = NULL;

  EXPECT(cudaStreamBeginCapture(0, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);
  EXPECT(cudaStreamBeginCapture(s, (enum cudaStreamCaptureMode)7), cudaErrorInvalidValue);
  EXPECT(cudaStreamEndCapture(s, &g), cudaErrorIllegalState);
  info(s, &st, &id1);
  CHECK(st == cudaStreamCaptureStatusNone);

  /* A clean capture: a memset, a device-to-device copy and a copy into pinned memory. */
  OK(cudaStreamBeginCapture(nb, cudaStreamCaptureModeRelaxed));
  OK(cudaStreamIsCapturing(nb, &st));
  CHECK(st == cudaStreamCaptureStatusActive);
  info(nb, &st, &id1);
  CHECK(st == cudaStreamCaptureStatusActive && id1 != 0);
  EXPECT(cudaStreamBeginCapture(nb, cudaStreamCaptureModeRelaxed), cudaErrorIllegalState);
  OK(cudaMemsetAsync(a, 0x5a, 4096, nb));
  OK(cudaMemcpyAsync(b, a, 4096, cudaMemcpyDeviceToDevice, nb));
  OK(cudaMemcpyAsync(pinned, b, 64, cudaMemcpyDeviceToHost, nb));
  OK(cudaStreamEndCapture(nb, &g));
  CHECK(g != NULL);
  OK(cudaStreamIsCapturing(nb, &st));
  CHECK(st == cudaStreamCaptureStatusNone);
  CHECK(pinned[0] == 0); /* captured, not run */

  cudaGraphExec_t e1 = NULL, e2 = NULL, e3 = NULL;
  OK(cudaGraphInstantiate(&e1, g, 0));
  OK(cudaGraphInstantiateWithFlags(&e2, g, 0));
  cudaGraphInstantiateParams ip;
  memset(&ip, 0, sizeof ip);
  ip.result_out = cudaGraphInstantiateError;
  OK(cudaGraphInstantiateWithParams(&e3, g, &ip));
  CHECK(ip.result_out == cudaGraphInstantiateSuccess);
  CHECK(e1 != NULL && e2 != NULL && e3 != NULL);
  cudaGraphExecUpdateResultInfo ri;
  memset(&ri, 0xff, sizeof ri);
  OK(cudaGraphExecUpdate(e1, g, &ri));
  CHECK(ri.result == cudaGraphExecUpdateSuccess);
  OK(cudaGraphLaunch(e1, nb));
  OK(cudaStreamSynchronize(nb));
  CHECK(pinned[0] == 0x5a && pinned[63] == 0x5a);
  OK(cudaGraphExecDestroy(e1));
  OK(cudaGraphExecDestroy(e2));
  OK(cudaGraphExecDestroy(e3));
  OK(cudaGraphDestroy(g));

  /* Work on the legacy stream while a blocking stream captures: an implicit dependency. */
  OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  info(s, &st, &id2);
  CHECK(st == cudaStreamCaptureStatusActive && id2 != id1);
  EXPECT(cudaMemsetAsync(a, 0, 16, 0), cudaErrorStreamCaptureImplicit);
  OK(cudaStreamIsCapturing(s, &st));
  CHECK(st == cudaStreamCaptureStatusInvalidated);
  g = (cudaGraph_t)1;
  EXPECT(cudaStreamEndCapture(s, &g), cudaErrorStreamCaptureInvalidated);
  CHECK(g == NULL);

  /* A pageable copy cannot be captured: refused, and the capture is invalidated. */
  OK(cudaStreamBeginCapture(nb, cudaStreamCaptureModeGlobal));
  EXPECT(cudaMemcpyAsync(b, host, 64, cudaMemcpyHostToDevice, nb), cudaErrorStreamCaptureUnsupported);
  EXPECT(cudaStreamSynchronize(nb), cudaErrorStreamCaptureInvalidated);
  EXPECT(cudaStreamEndCapture(nb, &g), cudaErrorStreamCaptureInvalidated);
  /* So is a stream sync. */
  OK(cudaStreamBeginCapture(nb, cudaStreamCaptureModeRelaxed));
  EXPECT(cudaStreamSynchronize(nb), cudaErrorStreamCaptureUnsupported);
  EXPECT(cudaStreamEndCapture(nb, &g), cudaErrorStreamCaptureInvalidated);

  /* Capture modes: cudaMalloc is prohibited under a global capture unless this thread is relaxed. */
  enum cudaStreamCaptureMode m = cudaStreamCaptureModeRelaxed;
  OK(cudaThreadExchangeStreamCaptureMode(&m));
  CHECK(m == cudaStreamCaptureModeGlobal);
  OK(cudaStreamBeginCapture(nb, cudaStreamCaptureModeGlobal));
  void *p = NULL;
  OK(cudaMalloc(&p, 16));
  OK(cudaThreadExchangeStreamCaptureMode(&m));
  CHECK(m == cudaStreamCaptureModeRelaxed);
  EXPECT(cudaMalloc(&p, 16), cudaErrorStreamCaptureUnsupported);
  EXPECT(cudaStreamEndCapture(nb, &g), cudaErrorStreamCaptureInvalidated);
  m = (enum cudaStreamCaptureMode)9;
  EXPECT(cudaThreadExchangeStreamCaptureMode(&m), cudaErrorInvalidValue);
  (void)cudaGetLastError();

  OK(cudaDeviceSynchronize());
  OK(cudaStreamDestroy(s));
  OK(cudaStreamDestroy(nb));
  PASS("capture");
}

// Stream capture and graphs: capture a memset, two launches, a device-to-device copy and a third
// launch on a non-blocking stream; instantiate; replay five times; capture the same shape with
// other parameters and cudaGraphExecUpdate the executable graph; replay three more times and once
// on another stream. Each replayed kernel node is one launch (EXPECT-LAUNCH ... graph=1).
#include "cu_check.h"

__global__ void step(float *x, int n, float a) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = x[i] * a + 1.0f;
}

__global__ void add2(float *dst, const float *src, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] += src[i] + (float)(i % 3);
}

static const int N = 4096;
static float *dA, *dB, *dC;

static cudaGraph_t capture(cudaStream_t s, float a2) {
  cudaStreamCaptureStatus st;
  CU_OK(cudaStreamIsCapturing(s, &st));
  CU_REQUIRE(st == cudaStreamCaptureStatusNone, "capturing before begin");
  CU_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  CU_OK(cudaStreamIsCapturing(s, &st));
  CU_REQUIRE(st == cudaStreamCaptureStatusActive, "not capturing after begin");
  CU_OK(cudaMemsetAsync(dA, 0, N * sizeof(float), s));
  step<<<N / 128, 128, 0, s>>>(dA, N, 2.0f);
  step<<<N / 128, 128, 0, s>>>(dA, N, a2);
  CU_OK(cudaMemcpyAsync(dB, dA, N * sizeof(float), cudaMemcpyDeviceToDevice, s));
  add2<<<N / 256, 256, 0, s>>>(dC, dB, N);
  CU_OK(cudaGetLastError());
  cudaGraph_t g;
  CU_OK(cudaStreamEndCapture(s, &g));
  CU_OK(cudaStreamIsCapturing(s, &st));
  CU_REQUIRE(st == cudaStreamCaptureStatusNone, "capturing after end");
  return g;
}

// The kernel nodes of one replay of the captured sequence.
static void expect_replay(float a2, const char *stream) {
  CuParams p1, p2, p3;
  p1.add(dA);
  p1.add(N);
  p1.add(2.0f);
  cu_expect_launch("_Z4stepPfif", dim3(N / 128), dim3(128), 0, p1, stream, true);
  p2.add(dA);
  p2.add(N);
  p2.add(a2);
  cu_expect_launch("_Z4stepPfif", dim3(N / 128), dim3(128), 0, p2, stream, true);
  p3.add(dC);
  p3.add((const float *)dB);
  p3.add(N);
  cu_expect_launch("_Z4add2PfPKfi", dim3(N / 256), dim3(256), 0, p3, stream, true);
}

int main() {
  cu_init("graphs");
  CU_OK(cudaMalloc(&dA, N * sizeof(float)));
  CU_OK(cudaMalloc(&dB, N * sizeof(float)));
  CU_OK(cudaMalloc(&dC, N * sizeof(float)));
  CU_OK(cudaMemset(dC, 0, N * sizeof(float)));
  cudaStream_t s, s2;
  CU_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CU_OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));

  // The legacy default stream cannot be captured.
  CU_EXPECT_ERR(cudaStreamBeginCapture(0, cudaStreamCaptureModeGlobal), cudaErrorStreamCaptureUnsupported);
  (void)cudaGetLastError();

  cudaGraph_t g1 = capture(s, 3.0f);
  cudaGraphExec_t exec;
  CU_OK(cudaGraphInstantiate(&exec, g1, 0));
  for (int r = 0; r < 5; r++) {
    expect_replay(3.0f, "s");
    CU_OK(cudaGraphLaunch(exec, s));
  }
  cu_sync("graph replays");
  float h1[N];
  {
    // dA = (0 * 2 + 1) * 3 + 1 = 4 each time; dC accumulates 5 * (4 + i % 3).
    CU_OK(cudaMemcpy(h1, dC, sizeof h1, cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) CU_REQUIRE(h1[i] == 5.0f * (4.0f + (float)(i % 3)), "after 5 replays [%d] = %g", i, h1[i]);
    cu_result_host("graphs.replays", h1, sizeof h1);
  }

  // Same topology, other parameters: update the executable graph in place.
  cudaGraph_t g2 = capture(s, 5.0f);
  cudaGraphExecUpdateResultInfo info;
  memset(&info, 0, sizeof info);
  CU_OK(cudaGraphExecUpdate(exec, g2, &info));
  CU_REQUIRE(info.result == cudaGraphExecUpdateSuccess, "cudaGraphExecUpdate result %d", (int)info.result);
  for (int r = 0; r < 3; r++) {
    expect_replay(5.0f, "s");
    CU_OK(cudaGraphLaunch(exec, s));
  }
  // And once on another stream, after the others (s2 waits for s).
  cudaEvent_t ev;
  CU_OK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  CU_OK(cudaEventRecord(ev, s));
  CU_OK(cudaStreamWaitEvent(s2, ev, 0));
  expect_replay(5.0f, "s2");
  CU_OK(cudaGraphLaunch(exec, s2));
  cu_sync("graph after update");
  {
    // dA = (0 * 2 + 1) * 5 + 1 = 6; four more replays.
    float h2[N];
    CU_OK(cudaMemcpy(h2, dC, sizeof h2, cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) CU_REQUIRE(h2[i] == h1[i] + 4.0f * (6.0f + (float)(i % 3)), "after update [%d] = %g", i, h2[i]);
    float hb[N];
    CU_OK(cudaMemcpy(hb, dB, sizeof hb, cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) CU_REQUIRE(hb[i] == 6.0f, "D2D node [%d] = %g", i, hb[i]);
    cu_result_host("graphs.updated", h2, sizeof h2);
  }

  CU_OK(cudaGraphExecDestroy(exec));
  CU_OK(cudaGraphDestroy(g1));
  CU_OK(cudaGraphDestroy(g2));
  CU_OK(cudaEventDestroy(ev));
  CU_OK(cudaStreamDestroy(s));
  CU_OK(cudaStreamDestroy(s2));
  CU_OK(cudaFree(dA));
  CU_OK(cudaFree(dB));
  CU_OK(cudaFree(dC));
  return cu_pass();
}

// Streams and events: four non-blocking streams, the legacy default stream and the per-thread
// default stream, with launches interleaved with pinned async copies in each; a cross-stream
// dependency through cudaStreamWaitEvent; timing events. The launches of each stream must reach
// the device in that stream's order (tests/kernels.rs checks it per stream).
#include "cu_check.h"

__global__ void axpb(float *x, int n, float a, float b) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = x[i] * a + b;
}

__global__ void accumulate(float *dst, const float *src, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] += src[i];
}

static const int K = 4, ROUNDS = 3, N = 1 << 16;

int main() {
  cu_init("streams");
  cudaStream_t s[K];
  const char *label[K] = {"s0", "s1", "s2", "s3"};
  float *hin[K], *hout[K], *d[K];
  for (int k = 0; k < K; k++) {
    CU_OK(cudaStreamCreateWithFlags(&s[k], cudaStreamNonBlocking));
    CU_OK(cudaMallocHost(&hin[k], N * sizeof(float)));
    CU_OK(cudaMallocHost(&hout[k], ROUNDS * N * sizeof(float)));
    CU_OK(cudaMalloc(&d[k], N * sizeof(float)));
    for (int i = 0; i < N; i++) hin[k][i] = (float)((i * (k + 3)) % 1000);
  }
  float *hacc, *dlegacy, *dpt;
  CU_OK(cudaMallocHost(&hacc, N * sizeof(float)));
  CU_OK(cudaMalloc(&dlegacy, N * sizeof(float)));
  CU_OK(cudaMalloc(&dpt, N * sizeof(float)));
  CU_OK(cudaMemset(dlegacy, 0, N * sizeof(float)));
  CU_OK(cudaMemset(dpt, 0, N * sizeof(float)));
  cudaEvent_t done0, t0, t1;
  CU_OK(cudaEventCreateWithFlags(&done0, cudaEventDisableTiming));
  CU_OK(cudaEventCreate(&t0));
  CU_OK(cudaEventCreate(&t1));

  dim3 g(N / 256), b(256);
  CU_OK(cudaEventRecord(t0, s[2]));
  for (int r = 0; r < ROUNDS; r++) {
    for (int k = 0; k < K; k++) {
      float a = (float)(2 + (r + k) % 2), c = (float)(r * 10 + k);
      CU_OK(cudaMemcpyAsync(d[k], hin[k], N * sizeof(float), cudaMemcpyHostToDevice, s[k]));
      CuParams p;
      p.add(d[k]);
      p.add(N);
      p.add(a);
      p.add(c);
      cu_expect_launch("_Z4axpbPfiff", g, b, 0, p, label[k]);
      axpb<<<g, b, 0, s[k]>>>(d[k], N, a, c);
      CU_OK(cudaMemcpyAsync(hout[k] + r * N, d[k], N * sizeof(float), cudaMemcpyDeviceToHost, s[k]));
    }
    // The legacy default stream and the per-thread default stream, between the rounds.
    CuParams pl;
    pl.add(dlegacy);
    pl.add(N);
    pl.add(1.0f);
    pl.add((float)(r + 1));
    cu_expect_launch("_Z4axpbPfiff", g, b, 0, pl, "legacy");
    axpb<<<g, b>>>(dlegacy, N, 1.0f, (float)(r + 1));
    CuParams pp;
    pp.add(dpt);
    pp.add(N);
    pp.add(2.0f);
    pp.add(1.0f);
    cu_expect_launch("_Z4axpbPfiff", g, b, 0, pp, "per-thread");
    axpb<<<g, b, 0, cudaStreamPerThread>>>(dpt, N, 2.0f, 1.0f);
  }
  CU_OK(cudaEventRecord(t1, s[2]));
  // s1 adds what s0 computed last, after s0 is done with it.
  CU_OK(cudaEventRecord(done0, s[0]));
  CU_OK(cudaStreamWaitEvent(s[1], done0, 0));
  {
    CuParams p;
    p.add(d[1]);
    p.add((const float *)d[0]);
    p.add(N);
    cu_expect_launch("_Z10accumulatePfPKfi", g, b, 0, p, "s1");
    accumulate<<<g, b, 0, s[1]>>>(d[1], d[0], N);
  }
  CU_OK(cudaMemcpyAsync(hacc, d[1], N * sizeof(float), cudaMemcpyDeviceToHost, s[1]));
  cu_sync("streams");

  float ms = -1;
  CU_OK(cudaEventElapsedTime(&ms, t0, t1));
  CU_REQUIRE(ms >= 0, "elapsed %g ms", ms);
  for (int k = 0; k < K; k++) CU_OK(cudaStreamQuery(s[k]));

  {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int k = 0; k < K; k++) {
      for (int r = 0; r < ROUNDS; r++) {
        float a = (float)(2 + (r + k) % 2), c = (float)(r * 10 + k);
        for (int i = 0; i < N; i++) {
          float want = hin[k][i] * a + c;
          CU_REQUIRE(hout[k][r * N + i] == want, "stream %d round %d [%d] = %g, expected %g", k, r, i, hout[k][r * N + i], want);
        }
      }
      h = cu_fnv(hout[k], ROUNDS * N * sizeof(float), h);
    }
    for (int i = 0; i < N; i++) {
      float want = hout[1][(ROUNDS - 1) * N + i] + hout[0][(ROUNDS - 1) * N + i];
      CU_REQUIRE(hacc[i] == want, "accumulate[%d] = %g, expected %g", i, hacc[i], want);
    }
    static float hl[N], hp[N];
    CU_OK(cudaMemcpy(hl, dlegacy, sizeof hl, cudaMemcpyDeviceToHost));
    CU_OK(cudaMemcpy(hp, dpt, sizeof hp, cudaMemcpyDeviceToHost));
    for (int i = 0; i < N; i++) CU_REQUIRE(hl[i] == 6.0f && hp[i] == 7.0f, "legacy %g per-thread %g", hl[i], hp[i]);
    printf("RESULT streams.out %016llx\n", (unsigned long long)h);
    cu_result_host("streams.acc", hacc, N * sizeof(float));
    cu_result_host("streams.defaults", hl, sizeof hl);
  }
  for (int k = 0; k < K; k++) {
    CU_OK(cudaStreamDestroy(s[k]));
    CU_OK(cudaFreeHost(hin[k]));
    CU_OK(cudaFreeHost(hout[k]));
    CU_OK(cudaFree(d[k]));
  }
  CU_OK(cudaFreeHost(hacc));
  CU_OK(cudaFree(dlegacy));
  CU_OK(cudaFree(dpt));
  CU_OK(cudaEventDestroy(done0));
  CU_OK(cudaEventDestroy(t0));
  CU_OK(cudaEventDestroy(t1));
  return cu_pass();
}

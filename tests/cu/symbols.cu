// __constant__ and __device__ globals: initial values from the image, cudaMemcpyToSymbol /
// FromSymbol (sync, async, with offsets, device-to-device), cudaGetSymbolAddress and
// cudaGetSymbolSize, a symbol's address passed as a kernel parameter, and kernels that read
// constants and update globals. The copies are checked on emu too (they need no kernel).
#include "cu_check.h"

__constant__ float coef[64];
__constant__ int cscale = 3;
__device__ int counter;
__device__ double table[128] = {1.0, 2.0, 4.0, 8.0, 16.0};
__device__ unsigned long long tick = 0x1122334455667788ull;

__global__ void use_symbols(float *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    out[i] = coef[i % 64] * (float)cscale + (float)table[i % 128];
    atomicAdd(&counter, 1);
  }
}

__global__ void bump(int *cnt, double by) {
  table[threadIdx.x] += by * threadIdx.x;
  if (threadIdx.x == 0) *cnt += 1000;
  if (threadIdx.x == 0) tick += 1;
}

int main() {
  cu_init("symbols");
  // Initial values, from the module image.
  unsigned long long t = 0;
  CU_OK(cudaMemcpyFromSymbol(&t, tick, sizeof t));
  CU_REQUIRE(t == 0x1122334455667788ull, "tick starts at %llx", t);
  double tab[128];
  CU_OK(cudaMemcpyFromSymbol(tab, table, sizeof tab));
  for (int i = 0; i < 128; i++) CU_REQUIRE(tab[i] == (i < 5 ? (double)(1 << i) : 0.0), "table[%d] = %g", i, tab[i]);
  int cs = 0;
  CU_OK(cudaMemcpyFromSymbol(&cs, cscale, sizeof cs));
  CU_REQUIRE(cs == 3, "cscale = %d", cs);

  size_t sz = 0;
  CU_OK(cudaGetSymbolSize(&sz, table));
  CU_REQUIRE(sz == 128 * sizeof(double), "sizeof table = %zu", sz);
  CU_OK(cudaGetSymbolSize(&sz, coef));
  CU_REQUIRE(sz == 64 * sizeof(float), "sizeof coef = %zu", sz);

  // Whole, then a part at an offset, then read back.
  float hc[64], part[16], back[64];
  for (int i = 0; i < 64; i++) hc[i] = (float)i * 0.5f;
  for (int i = 0; i < 16; i++) part[i] = -1.0f - (float)i;
  CU_OK(cudaMemcpyToSymbol(coef, hc, sizeof hc));
  CU_OK(cudaMemcpyToSymbol(coef, part, sizeof part, 32 * sizeof(float)));
  CU_OK(cudaMemcpyFromSymbol(back, coef, sizeof back));
  for (int i = 0; i < 64; i++) {
    float want = (i >= 32 && i < 48) ? part[i - 32] : hc[i];
    CU_REQUIRE(back[i] == want, "coef[%d] = %g, expected %g", i, back[i], want);
  }
  memcpy(hc + 32, part, sizeof part);
  float q[4];
  CU_OK(cudaMemcpyFromSymbol(q, coef, sizeof q, 40 * sizeof(float)));
  CU_REQUIRE(q[0] == hc[40] && q[3] == hc[43], "FromSymbol with offset");

  // Async on a stream, and device-to-device into a symbol.
  cudaStream_t s;
  CU_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int four = 4;
  CU_OK(cudaMemcpyToSymbolAsync(cscale, &four, sizeof four, 0, cudaMemcpyHostToDevice, s));
  CU_OK(cudaStreamSynchronize(s));
  CU_OK(cudaMemcpyFromSymbolAsync(&cs, cscale, sizeof cs, 0, cudaMemcpyDeviceToHost, s));
  CU_OK(cudaStreamSynchronize(s));
  CU_REQUIRE(cs == 4, "cscale after async copy = %d", cs);
  double *dtab;
  CU_OK(cudaMalloc(&dtab, 8 * sizeof(double)));
  double eight[8] = {0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5};
  CU_OK(cudaMemcpy(dtab, eight, sizeof eight, cudaMemcpyHostToDevice));
  CU_OK(cudaMemcpyToSymbol(table, dtab, sizeof eight, 8 * sizeof(double), cudaMemcpyDeviceToDevice));
  CU_OK(cudaMemcpyFromSymbol(tab, table, sizeof tab));
  for (int i = 0; i < 8; i++) CU_REQUIRE(tab[8 + i] == eight[i], "table[%d] = %g after D2D", 8 + i, tab[8 + i]);

  // The address of a global: usable with memset/memcpy and as a kernel parameter.
  int *pcounter = NULL;
  CU_OK(cudaGetSymbolAddress((void **)&pcounter, counter));
  CU_REQUIRE(pcounter != NULL, "cudaGetSymbolAddress(counter)");
  CU_OK(cudaMemset(pcounter, 0, sizeof(int)));
  int c0 = -1;
  CU_OK(cudaMemcpy(&c0, pcounter, sizeof c0, cudaMemcpyDeviceToHost));
  CU_REQUIRE(c0 == 0, "counter via its address = %d", c0);
  void *ptick = NULL;
  CU_OK(cudaGetSymbolAddress(&ptick, tick));
  CU_OK(cudaMemcpy(&t, ptick, sizeof t, cudaMemcpyDeviceToHost));
  CU_REQUIRE(t == 0x1122334455667788ull, "tick via its address");

  const int n = 500;
  float *dout;
  CU_OK(cudaMalloc(&dout, n * sizeof(float)));
  {
    CuParams p;
    p.add(dout);
    p.add(n);
    cu_expect_launch("_Z11use_symbolsPfi", dim3(4), dim3(128), 0, p, "s");
    use_symbols<<<4, 128, 0, s>>>(dout, n);
  }
  {
    CuParams p;
    p.add(pcounter);
    p.add(0.25);
    cu_expect_launch("_Z4bumpPid", dim3(1), dim3(128), 0, p, "s");
    bump<<<1, 128, 0, s>>>(pcounter, 0.25);
  }
  cu_sync("symbols");

  {
    static float ho[n];
    CU_OK(cudaMemcpy(ho, dout, sizeof ho, cudaMemcpyDeviceToHost));
    double before[128];
    memcpy(before, tab, sizeof before);
    for (int i = 0; i < n; i++) {
      float want = hc[i % 64] * 4.0f + (float)before[i % 128];
      CU_REQUIRE(ho[i] == want, "use_symbols[%d] = %g, expected %g", i, ho[i], want);
    }
    int cnt = 0;
    CU_OK(cudaMemcpyFromSymbol(&cnt, counter, sizeof cnt));
    CU_REQUIRE(cnt == n + 1000, "counter = %d", cnt);
    CU_OK(cudaMemcpyFromSymbol(tab, table, sizeof tab));
    for (int i = 0; i < 128; i++) CU_REQUIRE(tab[i] == before[i] + 0.25 * i, "table[%d] after bump", i);
    CU_OK(cudaMemcpyFromSymbol(&t, tick, sizeof t));
    CU_REQUIRE(t == 0x1122334455667789ull, "tick after bump");
    cu_result_host("symbols.out", ho, sizeof ho);
    cu_result_host("symbols.table", tab, sizeof tab);
    cu_result_host("symbols.counter", &cnt, sizeof cnt);
  }
  CU_OK(cudaFree(dout));
  CU_OK(cudaFree(dtab));
  CU_OK(cudaStreamDestroy(s));
  return cu_pass();
}

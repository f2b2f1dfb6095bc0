// Templates: function templates over the element type and a non-type parameter, a class template
// by value, a functor template, and a kernel in a namespace. Each instantiation is its own kernel
// with its own mangled name and layout.
#include "cu_check.h"

namespace vg {
template <typename T> struct Pair {
  T first;
  T second;
};

struct AddMul {
  float add, mul;
  __device__ float operator()(float x) const { return x * mul + add; }
};

// (T *, T, int): offsets 0, 8, 8 + sizeof(T) rounded.
template <typename T, int N> __global__ void fill(T *out, T v, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = v * (T)N + (T)i;
}

template <typename T> __global__ void pairsum(Pair<T> p, T *out) { out[threadIdx.x] = p.first + p.second * (T)threadIdx.x; }

template <typename F> __global__ void apply(F f, const float *in, float *out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = f(in[i]);
}
}  // namespace vg

template __global__ void vg::fill<float, 2>(float *, float, int);
template __global__ void vg::fill<double, 3>(double *, double, int);
template __global__ void vg::fill<int, -1>(int *, int, int);
template __global__ void vg::fill<unsigned char, 7>(unsigned char *, unsigned char, int);

int main() {
  cu_init("templates");
  const int n = 1000;
  float *df, *din, *dout;
  double *dd;
  int *di;
  unsigned char *db;
  long long *dl;
  CU_OK(cudaMalloc(&df, n * sizeof(float)));
  CU_OK(cudaMalloc(&dd, n * sizeof(double)));
  CU_OK(cudaMalloc(&di, n * sizeof(int)));
  CU_OK(cudaMalloc(&db, n));
  CU_OK(cudaMalloc(&dl, 64 * sizeof(long long)));
  CU_OK(cudaMalloc(&din, n * sizeof(float)));
  CU_OK(cudaMalloc(&dout, n * sizeof(float)));
  float hin[n];
  for (int i = 0; i < n; i++) hin[i] = (float)i * 0.25f - 10.0f;
  CU_OK(cudaMemcpy(din, hin, sizeof hin, cudaMemcpyHostToDevice));

  dim3 g((n + 127) / 128), b(128);
  {
    CuParams p;
    p.add(df);
    p.add(1.5f);
    p.add(n);
    cu_expect_launch("_ZN2vg4fillIfLi2EEEvPT_S1_i", g, b, 0, p, "legacy");
    vg::fill<float, 2><<<g, b>>>(df, 1.5f, n);
  }
  {
    CuParams p;
    p.add(dd);
    p.add(-2.25);
    p.add(n);
    cu_expect_launch("_ZN2vg4fillIdLi3EEEvPT_S1_i", g, b, 0, p, "legacy");
    vg::fill<double, 3><<<g, b>>>(dd, -2.25, n);
  }
  {
    CuParams p;
    p.add(di);
    p.add(42);
    p.add(n);
    cu_expect_launch("_ZN2vg4fillIiLin1EEEvPT_S1_i", g, b, 0, p, "legacy");
    vg::fill<int, -1><<<g, b>>>(di, 42, n);
  }
  {
    CuParams p;
    unsigned char v = 9;
    p.add(db);
    p.add(v);
    p.add(n);
    CU_REQUIRE(p.len == 16, "fill<uchar>: %zu", p.len);
    cu_expect_launch("_ZN2vg4fillIhLi7EEEvPT_S1_i", g, b, 0, p, "legacy");
    vg::fill<unsigned char, 7><<<g, b>>>(db, v, n);
  }
  {
    vg::Pair<long long> pr;
    pr.first = 1LL << 40;
    pr.second = -3;
    CuParams p;
    p.add(pr);
    p.add(dl);
    cu_expect_launch("_ZN2vg7pairsumIxEEvNS_4PairIT_EEPS2_", dim3(1), dim3(64), 0, p, "legacy");
    vg::pairsum<long long><<<1, 64>>>(pr, dl);
  }
  {
    vg::AddMul f;
    f.add = 0.5f;
    f.mul = -2.0f;
    CuParams p;
    p.add(f);
    p.add((const float *)din);
    p.add(dout);
    p.add(n);
    CU_REQUIRE(p.len == 28, "apply: %zu", p.len);
    cu_expect_launch("_ZN2vg5applyINS_6AddMulEEEvT_PKfPfi", g, b, 0, p, "legacy");
    vg::apply<<<g, b>>>(f, (const float *)din, dout, n);
  }
  cu_sync("templates");

  {
    static float hf[n], ho[n];
    static double hd[n];
    static int hi[n];
    static unsigned char hb[n];
    long long hl[64];
    CU_OK(cudaMemcpy(hf, df, sizeof hf, cudaMemcpyDeviceToHost));
    CU_OK(cudaMemcpy(hd, dd, sizeof hd, cudaMemcpyDeviceToHost));
    CU_OK(cudaMemcpy(hi, di, sizeof hi, cudaMemcpyDeviceToHost));
    CU_OK(cudaMemcpy(hb, db, sizeof hb, cudaMemcpyDeviceToHost));
    CU_OK(cudaMemcpy(hl, dl, sizeof hl, cudaMemcpyDeviceToHost));
    CU_OK(cudaMemcpy(ho, dout, sizeof ho, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) {
      CU_REQUIRE(hf[i] == 1.5f * 2 + (float)i, "fill<float>[%d] = %g", i, hf[i]);
      CU_REQUIRE(hd[i] == -2.25 * 3 + (double)i, "fill<double>[%d] = %g", i, hd[i]);
      CU_REQUIRE(hi[i] == -42 + i, "fill<int>[%d] = %d", i, hi[i]);
      CU_REQUIRE(hb[i] == (unsigned char)(9 * 7 + i), "fill<uchar>[%d] = %d", i, hb[i]);
      CU_REQUIRE(ho[i] == hin[i] * -2.0f + 0.5f, "apply[%d] = %g", i, ho[i]);
    }
    for (int i = 0; i < 64; i++) CU_REQUIRE(hl[i] == (1LL << 40) - 3LL * i, "pairsum[%d]", i);
    cu_result_host("templates.float", hf, sizeof hf);
    cu_result_host("templates.double", hd, sizeof hd);
    cu_result_host("templates.int", hi, sizeof hi);
    cu_result_host("templates.uchar", hb, sizeof hb);
    cu_result_host("templates.pair", hl, sizeof hl);
    cu_result_host("templates.apply", ho, sizeof ho);
  }
  CU_OK(cudaFree(df));
  CU_OK(cudaFree(dd));
  CU_OK(cudaFree(di));
  CU_OK(cudaFree(db));
  CU_OK(cudaFree(dl));
  CU_OK(cudaFree(din));
  CU_OK(cudaFree(dout));
  return cu_pass();
}

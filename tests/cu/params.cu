// Parameter layouts: mixed alignment (char, short, double, float4, pointers, unsigned long long),
// a struct by value with inner and tail padding, a 160-byte struct by value, 41 parameters, and a
// kernel without parameters. Each kernel writes back what it received; the host checks it field by
// field on a GPU and prints the bytes it expects the runtime to marshal for every launch.
#include "cu_check.h"

struct S {  // 24 bytes: c at 0, 7 padding bytes, d at 8, i at 16, 4 tail padding bytes
  char c;
  double d;
  int i;
};

struct Big {
  int v[40];
};

struct Mix {
  char a;
  short b;
  double c;
  float4 d;
  char e;
  float f;
  unsigned long long g;
  int deref;
};

// a@0 b@2 c@8 d@16 p@32 e@40 f@44 g@48 out@56: 64 bytes.
__global__ void mixed(char a, short b, double c, float4 d, const int *p, char e, float f, unsigned long long g, Mix *out) {
  out->a = a;
  out->b = b;
  out->c = c;
  out->d = d;
  out->e = e;
  out->f = f;
  out->g = g;
  out->deref = *p;
}

// s@0 (24) n@24 out@32: 40 bytes.
__global__ void bystruct(S s, int n, S *out) {
  out[n].c = s.c;
  out[n].d = s.d;
  out[n].i = s.i + (int)(blockIdx.x + blockIdx.y * 10 + threadIdx.z * 100);
}

// b@0 (160) tag@160 out@168: 176 bytes.
__global__ void big(Big b, char tag, int *out) {
  int t = threadIdx.x;
  if (t < 40) out[t] = b.v[t] * 2 + tag;
}

#define G(n) char c##n, int i##n, double d##n, short s##n
#define W(n)                                                                                        \
  out[4 * n] = c##n;                                                                                \
  out[4 * n + 1] = i##n;                                                                            \
  out[4 * n + 2] = d##n;                                                                            \
  out[4 * n + 3] = s##n;
// 41 parameters: ten groups (char, int, double, short) and the output pointer.
__global__ void many(G(0), G(1), G(2), G(3), G(4), G(5), G(6), G(7), G(8), G(9), double *out) {
  W(0) W(1) W(2) W(3) W(4) W(5) W(6) W(7) W(8) W(9)
}

extern "C" __global__ void empty_kernel() {}

int main() {
  cu_init("params");
  Mix *dmix;
  S *ds;
  int *dbig, *dval;
  double *dmany;
  CU_OK(cudaMalloc(&dmix, sizeof(Mix)));
  CU_OK(cudaMalloc(&ds, 8 * sizeof(S)));
  CU_OK(cudaMalloc(&dbig, 40 * sizeof(int)));
  CU_OK(cudaMalloc(&dmany, 40 * sizeof(double)));
  CU_OK(cudaMalloc(&dval, sizeof(int)));
  int val = 0x1234567;
  CU_OK(cudaMemcpy(dval, &val, sizeof val, cudaMemcpyHostToDevice));
  CU_OK(cudaMemset(dmix, 0, sizeof(Mix)));
  CU_OK(cudaMemset(ds, 0, 8 * sizeof(S)));
  CU_OK(cudaMemset(dbig, 0, 40 * sizeof(int)));
  CU_OK(cudaMemset(dmany, 0, 40 * sizeof(double)));

  // mixed
  char a = -5;
  short b = -1234;
  double c = 3.25;
  float4 d = make_float4(1.5f, -2.5f, 3.5f, -4.5f);
  const int *p = dval;
  char e = 77;
  float f = 0.125f;
  unsigned long long g = 0xfedcba9876543210ull;
  {
    CuParams pb;
    size_t offs[9];
    offs[0] = pb.add(a);
    offs[1] = pb.add(b);
    offs[2] = pb.add(c);
    offs[3] = pb.add(d);
    offs[4] = pb.add(p);
    offs[5] = pb.add(e);
    offs[6] = pb.add(f);
    offs[7] = pb.add(g);
    offs[8] = pb.add(dmix);
    const size_t want[9] = {0, 2, 8, 16, 32, 40, 44, 48, 56};
    for (int i = 0; i < 9; i++) CU_REQUIRE(offs[i] == want[i], "mixed: parameter %d at %zu, expected %zu", i, offs[i], want[i]);
    CU_REQUIRE(pb.len == 64, "mixed: %zu bytes", pb.len);
    cu_expect_launch("_Z5mixedcsd6float4PKicfyP3Mix", dim3(1), dim3(1), 0, pb, "legacy");
  }
  mixed<<<1, 1>>>(a, b, c, d, p, e, f, g, dmix);

  // struct by value, twice, 2-D grid and 3-D block; padding bytes are zero because the whole
  // struct is cleared first (the runtime copies sizeof(S) bytes, padding included).
  S s;
  memset(&s, 0, sizeof s);
  s.c = 'q';
  s.d = -0.0625;
  s.i = 1000;
  for (int n = 0; n < 2; n++) {
    CuParams pb;
    CU_REQUIRE(pb.add(s) == 0 && pb.add(n) == 24 && pb.add(ds) == 32 && pb.len == 40, "bystruct layout");
    cu_expect_launch("_Z8bystruct1SiPS_", dim3(2, 3, 1), dim3(1, 1, 2), 0, pb, "legacy");
    bystruct<<<dim3(2, 3, 1), dim3(1, 1, 2)>>>(s, n, ds);
  }

  // a 160-byte struct
  Big bg;
  for (int i = 0; i < 40; i++) bg.v[i] = i * i - 7;
  char tag = 3;
  {
    CuParams pb;
    CU_REQUIRE(pb.add(bg) == 0 && pb.add(tag) == 160 && pb.add(dbig) == 168 && pb.len == 176, "big layout");
    cu_expect_launch("_Z3big3BigcPi", dim3(1), dim3(64), 0, pb, "legacy");
  }
  big<<<1, 64>>>(bg, tag, dbig);

  // 41 parameters
  char cs[10];
  int is[10];
  double ds_[10];
  short ss[10];
  CuParams pm;
  for (int n = 0; n < 10; n++) {
    cs[n] = (char)(n * 11 - 40);
    is[n] = n * 100003 - 7;
    ds_[n] = n * 0.5 - 1.75;
    ss[n] = (short)(n * 1001 - 3000);
    pm.add(cs[n]);
    pm.add(is[n]);
    pm.add(ds_[n]);
    pm.add(ss[n]);
  }
  pm.add(dmany);
  // Group 0 at 0, 4, 8, 16; group k at 16k + 2, 16k + 4, 16k + 8, 16k + 16; out at 168.
  CU_REQUIRE(pm.len == 176, "many: %zu bytes", pm.len);
#define A(n) cs[n], is[n], ds_[n], ss[n]
  cu_expect_launch("_Z4manycidscidscidscidscidscidscidscidscidscidsPd", dim3(1), dim3(1), 0, pm, "legacy");
  many<<<1, 1>>>(A(0), A(1), A(2), A(3), A(4), A(5), A(6), A(7), A(8), A(9), dmany);

  // no parameters, C linkage
  cu_expect_launch("empty_kernel", dim3(4), dim3(32), 0, CuParams(), "legacy");
  empty_kernel<<<4, 32>>>();

  cu_sync("params");

  {
    Mix hm;
    CU_OK(cudaMemcpy(&hm, dmix, sizeof hm, cudaMemcpyDeviceToHost));
    CU_REQUIRE(hm.a == a && hm.b == b && hm.c == c && hm.d.x == d.x && hm.d.y == d.y && hm.d.z == d.z && hm.d.w == d.w &&
                   hm.e == e && hm.f == f && hm.g == g && hm.deref == val,
               "mixed: the kernel saw other values");
    S hs[8];
    CU_OK(cudaMemcpy(hs, ds, sizeof hs, cudaMemcpyDeviceToHost));
    for (int n = 0; n < 2; n++) {
      CU_REQUIRE(hs[n].c == 'q' && hs[n].d == -0.0625 && hs[n].i >= 1000 && hs[n].i <= 1000 + 1 + 20 + 100,
                 "bystruct[%d]: %d %g %d", n, hs[n].c, hs[n].d, hs[n].i);
    }
    int hb[40];
    CU_OK(cudaMemcpy(hb, dbig, sizeof hb, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 40; i++) CU_REQUIRE(hb[i] == bg.v[i] * 2 + tag, "big[%d] = %d", i, hb[i]);
    double hmany[40];
    CU_OK(cudaMemcpy(hmany, dmany, sizeof hmany, cudaMemcpyDeviceToHost));
    for (int n = 0; n < 10; n++) {
      CU_REQUIRE(hmany[4 * n] == cs[n] && hmany[4 * n + 1] == is[n] && hmany[4 * n + 2] == ds_[n] && hmany[4 * n + 3] == ss[n],
                 "many: group %d", n);
    }
    // hs[n].i depends on which block wrote last: only the deterministic parts go into the checksum.
    cu_result_host("params.mixed", &hm, sizeof hm);
    cu_result_host("params.big", hb, sizeof hb);
    cu_result_host("params.many", hmany, sizeof hmany);
  }
  CU_OK(cudaFree(dmix));
  CU_OK(cudaFree(ds));
  CU_OK(cudaFree(dbig));
  CU_OK(cudaFree(dmany));
  CU_OK(cudaFree(dval));
  return cu_pass();
}

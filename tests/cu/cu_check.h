// Shared by the .cu suite (tests/cu/*.cu): checks, the EXPECT-LAUNCH lines, the emu/GPU split and
// the RESULT checksums. Built with nvcc 13 (scripts/setup-nvcc.sh), `-cudart shared`, linked against
// our libcudart.so.13 (tests/kernels.rs) or, on a GPU machine, run on NVIDIA's (scripts/gpu-check.sh).
//
// Output protocol, one line each (see /tmp/plan/kernels-contract.md and tests/kernels.rs):
//   EXPECT-LAUNCH <kernel> grid=x,y,z block=x,y,z shared=N params=<hex> stream=<label>[ graph=1]
//       one per launch the program makes (a graph replay prints one per kernel node and replay,
//       with graph=1), parameter bytes built here in host code, independently of the runtime;
//       <label> names the stream in the program (tests/kernels.rs maps labels to the mediator's
//       stream ids: the launches of one label must be one stream's, in order).
//   RESULT <name> <16 hex digits>
//       FNV-1a 64 of a result buffer the program has checked; scripts/gpu-check.sh compares
//       native and vgpu on a GPU. emu runs the kernels (PTX interpreter), so the results are
//       checked there too.
//   ok <program>              last line on success (exit status 0).
#ifndef VGPU_CU_CHECK_H
#define VGPU_CU_CHECK_H

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CU_OK(call)                                                                                 \
  do {                                                                                              \
    cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess) {                                                                        \
      fprintf(stderr, "%s:%d: %s returned %s (%s)\n", __FILE__, __LINE__, #call,                   \
              cudaGetErrorName(e_), cudaGetErrorString(e_));                                        \
      exit(1);                                                                                      \
    }                                                                                               \
  } while (0)

#define CU_EXPECT_ERR(call, want)                                                                   \
  do {                                                                                              \
    cudaError_t e_ = (call);                                                                        \
    if (e_ != (want)) {                                                                             \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s\n", __FILE__, __LINE__, #call,           \
              cudaGetErrorName(e_), cudaGetErrorName(want));                                        \
      exit(1);                                                                                      \
    }                                                                                               \
  } while (0)

#define CU_REQUIRE(cond, ...)                                                                       \
  do {                                                                                              \
    if (!(cond)) {                                                                                  \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                     \
      fprintf(stderr, __VA_ARGS__);                                                                 \
      fprintf(stderr, "\n");                                                                        \
      exit(1);                                                                                      \
    }                                                                                               \
  } while (0)

static const char *cu_prog = "?";
static bool cu_emu = false;
static cudaDeviceProp cu_prop;

// Call first. Decides emu vs GPU from the device name (emu's starts with "vgpu emu").
static inline void cu_init(const char *prog) {
  cu_prog = prog;
  setvbuf(stdout, NULL, _IOLBF, 0);
  int n = 0;
  CU_OK(cudaGetDeviceCount(&n));
  CU_REQUIRE(n >= 1, "no device");
  CU_OK(cudaGetDeviceProperties(&cu_prop, 0));
  cu_emu = strncmp(cu_prop.name, "vgpu emu", 8) == 0;
  printf("DEVICE %s (cc %d.%d, %d SMs)%s\n", cu_prop.name, cu_prop.major, cu_prop.minor,
         cu_prop.multiProcessorCount, cu_emu ? " emu" : "");
}

// ---- parameter bytes, built on the host by the C ABI rule: each parameter at the next multiple
// of its alignment, zero bytes in between, the buffer ending at the last parameter's end. ----
struct CuParams {
  unsigned char b[4096];
  size_t len;
  CuParams() : len(0) { memset(b, 0, sizeof b); }
  // Append `v`; returns its offset.
  template <class T> size_t add(const T &v) { return put(&v, sizeof(T), alignof(T)); }
  size_t put(const void *p, size_t size, size_t align) {
    size_t off = (len + align - 1) / align * align;
    CU_REQUIRE(off + size <= sizeof b, "parameter buffer overflow");
    memcpy(b + off, p, size);
    len = off + size;
    return off;
  }
};

static long cu_launches = 0;  // launches since the last sync point

static inline void cu_expect_launch(const char *kernel, dim3 g, dim3 bl, size_t shared, const CuParams &p,
                                    const char *stream, bool graph = false) {
  printf("EXPECT-LAUNCH %s grid=%u,%u,%u block=%u,%u,%u shared=%zu params=", kernel, g.x, g.y, g.z, bl.x, bl.y,
         bl.z, shared);
  for (size_t i = 0; i < p.len; i++) printf("%02x", p.b[i]);
  printf(" stream=%s%s\n", stream, graph ? " graph=1" : "");
  cu_launches++;
}

// The synchronising call after a batch of launches (`e` is what it returned): it must succeed,
// on a GPU and on emu alike.
static inline void cu_sync_point(cudaError_t e, const char *where) {
  if (e != cudaSuccess) {
    fprintf(stderr, "%s: sync at %s after %ld launches returned %s (%s)\n", cu_prog, where, cu_launches, cudaGetErrorName(e),
            cudaGetErrorString(e));
    exit(1);
  }
  cu_launches = 0;
}

static inline void cu_sync(const char *where) { cu_sync_point(cudaDeviceSynchronize(), where); }

// FNV-1a 64.
static inline uint64_t cu_fnv(const void *p, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const unsigned char *c = (const unsigned char *)p;
  for (size_t i = 0; i < n; i++) {
    h ^= c[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

// Copy `n` bytes of device memory back and print its checksum.
static inline uint64_t cu_result_dev(const char *name, const void *dev, size_t n) {
  void *h = malloc(n ? n : 1);
  CU_REQUIRE(h != NULL, "malloc");
  CU_OK(cudaMemcpy(h, dev, n, cudaMemcpyDeviceToHost));
  uint64_t s = cu_fnv(h, n);
  free(h);
  printf("RESULT %s %016llx\n", name, (unsigned long long)s);
  return s;
}

static inline void cu_result_host(const char *name, const void *p, size_t n) {
  printf("RESULT %s %016llx\n", name, (unsigned long long)cu_fnv(p, n));
}

static inline int cu_pass() {
  printf("ok %s\n", cu_prog);
  fflush(stdout);
  return 0;
}

#endif

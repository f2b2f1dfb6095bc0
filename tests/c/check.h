/* Shared by the conformance programs: each checks one documented behaviour of the CUDA Runtime
 * API, prints "ok <name>" and exits 0, or prints what differed and exits 1. Compiled with gcc
 * against NVIDIA's own cuda_runtime_api.h (CUDA 12.9 or 13.0) and linked against our
 * libcudart.so.12 / .13 (tests/cudart.rs). */
#ifndef VGPU_CHECK_H
#define VGPU_CHECK_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* `call` must return `want`. */
#define EXPECT(call, want)                                                                        \
  do {                                                                                            \
    cudaError_t got_ = (call);                                                                    \
    if (got_ != (want)) {                                                                         \
      fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d (%s)\n", __FILE__, __LINE__,     \
              #call, (int)got_, cudaGetErrorName(got_), (int)(want), cudaGetErrorName(want));     \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)

#define OK(call) EXPECT(call, cudaSuccess)

#define CHECK(cond)                                                                               \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                  \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)

#define PASS(name)                                                                                \
  do {                                                                                            \
    printf("ok %s (CUDART_VERSION %d)\n", name, CUDART_VERSION);                                 \
    return 0;                                                                                     \
  } while (0)

#endif

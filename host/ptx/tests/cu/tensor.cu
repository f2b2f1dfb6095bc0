// mma, ldmatrix and the block and warp reductions through nvcc, for host/ptx/tests/tensor.rs:
// nvcc -ptx -arch=compute_90 -o host/ptx/tests/data/tensor_90.ptx host/ptx/tests/cu/tensor.cu
// The fragments are loaded as CUDA code does: ldmatrix from shared memory (the A tile as four
// 8x8 matrices, B transposed), or by the ISA's index formulas for the int8 shape.
#include <cstdint>

// D (16x8 f32) = A (16x16 f16 bits, row-major) * B (16x8 f16 bits, k-major rows) + C (16x8 f32).
extern "C" __global__ void mma_f16(const uint16_t *a, const uint16_t *b, const float *c, float *d) {
  __shared__ __align__(16) uint16_t as[16 * 16];
  __shared__ __align__(16) uint16_t bs[16 * 8];
  unsigned lane = threadIdx.x;
  for (unsigned x = lane; x < 256; x += 32) as[x] = a[x];
  for (unsigned x = lane; x < 128; x += 32) bs[x] = b[x];
  __syncwarp();
  unsigned a0, a1, a2, a3, b0, b1;
  // Lanes 0-15 give rows 0-15 of columns 0-7, lanes 16-31 the same rows of columns 8-15.
  unsigned pa = (unsigned)__cvta_generic_to_shared(&as[(lane % 16) * 16 + (lane / 16) * 8]);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3)
               : "r"(pa));
  // Lanes 0-15 give rows k = 0-15 of B; transposed, each lane gets two k of one column n.
  unsigned pb = (unsigned)__cvta_generic_to_shared(&bs[(lane % 16) * 8]);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];" : "=r"(b0), "=r"(b1) : "r"(pb));
  unsigned g = lane >> 2, t = lane % 4;
  float c0 = c[g * 8 + 2 * t], c1 = c[g * 8 + 2 * t + 1];
  float c2 = c[(g + 8) * 8 + 2 * t], c3 = c[(g + 8) * 8 + 2 * t + 1];
  float d0, d1, d2, d3;
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};"
      : "=f"(d0), "=f"(d1), "=f"(d2), "=f"(d3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(c0), "f"(c1), "f"(c2), "f"(c3));
  d[g * 8 + 2 * t] = d0;
  d[g * 8 + 2 * t + 1] = d1;
  d[(g + 8) * 8 + 2 * t] = d2;
  d[(g + 8) * 8 + 2 * t + 1] = d3;
}

// D (16x8 s32) = A (16x32 s8, row-major) * B (32x8 s8, row-major k x n) + C, saturating.
extern "C" __global__ void mma_s8(const int8_t *a, const int8_t *b, const int *c, int *d) {
  unsigned lane = threadIdx.x, g = lane >> 2, t = lane % 4;
  unsigned ra[4], rb[2];
  for (int r = 0; r < 4; r++) {
    unsigned v = 0;
    for (int e = 0; e < 4; e++) {
      int i = r * 4 + e;  // a_i: row g (+8 for 4 <= i < 8, 12 <= i), column 4t + i%4 (+16 for i >= 8)
      int row = g + ((i / 4) % 2) * 8, col = t * 4 + (i % 4) + (i >= 8 ? 16 : 0);
      v |= (unsigned)(uint8_t)a[row * 32 + col] << (8 * e);
    }
    ra[r] = v;
  }
  for (int r = 0; r < 2; r++) {
    unsigned v = 0;
    for (int e = 0; e < 4; e++) {
      int i = r * 4 + e;  // b_i: row 4t + i%4 (+16 for i >= 4), column g
      v |= (unsigned)(uint8_t)b[(t * 4 + (i % 4) + (i >= 4 ? 16 : 0)) * 8 + g] << (8 * e);
    }
    rb[r] = v;
  }
  int c0 = c[g * 8 + 2 * t], c1 = c[g * 8 + 2 * t + 1], c2 = c[(g + 8) * 8 + 2 * t], c3 = c[(g + 8) * 8 + 2 * t + 1];
  int d0, d1, d2, d3;
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};"
      : "=r"(d0), "=r"(d1), "=r"(d2), "=r"(d3)
      : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]), "r"(c0), "r"(c1), "r"(c2), "r"(c3));
  d[g * 8 + 2 * t] = d0;
  d[g * 8 + 2 * t + 1] = d1;
  d[(g + 8) * 8 + 2 * t] = d2;
  d[(g + 8) * 8 + 2 * t + 1] = d3;
}

// Block and warp reductions, matches, a counted named barrier and the scheduling hints; 12
// results per thread.
extern "C" __global__ void sync_ops(const int *in, int *out) {
  cudaGridDependencySynchronize();
  unsigned tid = threadIdx.x;
  int v = in[tid];
  int *o = out + tid * 12;
  o[0] = __syncthreads_count(v > 0);
  o[1] = __syncthreads_and(v > -100);
  o[2] = __syncthreads_or(v == 7);
  o[3] = (int)__reduce_add_sync(0xffffffff, (unsigned)v);
  o[4] = __reduce_min_sync(0xffffffff, v);
  o[5] = __reduce_max_sync(0xffffffff, v);
  o[6] = (int)(__reduce_and_sync(0xffffffff, (unsigned)v) ^ __reduce_or_sync(0xffffffff, (unsigned)v));
  o[7] = (int)__reduce_xor_sync(0xffffffff, (unsigned)v);
  o[8] = (int)__match_any_sync(0xffffffff, v & 3);
  int pred;
  o[9] = (int)__match_all_sync(0xffffffff, tid / 32, &pred) + pred;
  __nanosleep(100);
  // The first two warps meet at barrier 1, the others go on.
  if (tid < 64) __barrier_sync_count(1, 64);
  o[10] = __byte_perm(v, 0x76543210, 0x1357);
  cudaTriggerProgrammaticLaunchCompletion();
  o[11] = 1;
}

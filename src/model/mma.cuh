// What the project's CUDA kernels share on the device: tensor-core steps, their fragments from
// shared memory, and asynchronous copies into it.
//
// One tensor-core step: C += A B with A 16 x 16 (row-major
// fragments a0..a3), B 16 x 8 (column fragments b0, b1), bf16 operands and fp32 accumulators
// (PTX mma.sync.m16n8k16). Lane (g = lane / 4, t = lane % 4) holds rows g and g + 8 of A at
// columns 2t, 2t + 1 (a0, a1) and 2t + 8, 2t + 9 (a2, a3), rows 2t, 2t + 1 (b0) and 2t + 8,
// 2t + 9 (b1) of B's column g, and C's rows g (c0, c1) and g + 8 (c2, c3) at columns 2t, 2t + 1.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace grpo::model {

__device__ __forceinline__ void mma_bf16(float c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  mma_bf16(c, a[0], a[1], a[2], a[3], b[0], b[1]);
}

// Asynchronous copies global -> shared (cp.async, sm_80 on): 16 bytes, zero-filled when !valid
// (the source is then not read); a group of them is committed, and waited for with at most N
// younger groups still in flight.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const uint32_t s = (uint32_t)__cvta_generic_to_shared(dst);
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Fragments straight from shared memory: lane l gives the address of row l % 8 of 8 x 8 matrix
// l / 8 (16 bytes each); x4 loads four matrices, x2 two, .trans transposes each.
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const __nv_bfloat16* p) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const __nv_bfloat16* p) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const __nv_bfloat16* p) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Two adjacent bf16 (4-byte aligned) as one fragment register.
__device__ __forceinline__ uint32_t load_pair(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

}  // namespace grpo::model

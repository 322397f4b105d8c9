// The arithmetic of the batch-invariant CPU kernels (invariant_kernels.cpp, invariant_products.cpp):
// a dot product is eight interleaved fp32 partial sums (lane u takes k = u, u + 8, ...), each step
// one multiply and one add per lane, no contraction; the eight combined as a fixed tree; then the
// tail of K in order. Written with eight-lane vectors so that the compiler keeps the sums in one
// register, and identical to the scalar loop bit for bit. Only for files compiled with
// -ffp-contract=off (a fused multiply-add would round once where the order rounds twice).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace grpo::model::invariant::cpu {

// The helpers are inlined into callers compiled for several instruction sets.
#define GRPO_INLINE inline __attribute__((always_inline))

// The loops that call them are compiled for AVX-512 (x86-64-v4: 32 vector registers), AVX2 and
// the baseline, and the CPU picks one at load time. Every clone does each output's arithmetic in
// the same order: more registers and wider vectors change the speed, not the results.
// (GCC before 12 knows no x86-64-v4 clone: AVX-512F alone, with 16 registers, serves instead.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#if __GNUC__ >= 12
#define GRPO_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#define GRPO_CLONE_X86_64_V4 1
#else
#define GRPO_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define GRPO_VECTOR_CLONES
#endif

#pragma GCC diagnostic ignored "-Wpsabi"  // the vector helpers are inline: no ABI crosses a call
typedef float v8f __attribute__((vector_size(32)));
typedef uint16_t v8u16 __attribute__((vector_size(16)));
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef uint32_t v8u32 __attribute__((vector_size(32)));

GRPO_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
// Exact: a bf16 is the top half of its fp32, so each value goes above a zero half (one permute with
// AVX-512; a widening and a shift compile to five operations, which GCC before 12, without
// __builtin_shufflevector, takes).
GRPO_INLINE v8f load8(const c10::BFloat16* p) {
  v8u16 h;
  std::memcpy(&h, p, sizeof h);
#if defined(__clang__) || __GNUC__ >= 12
  const v8u16 zero = {};
  const v16u16 bits = __builtin_shufflevector(zero, h, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
#else
  const v8u32 bits = __builtin_convertvector(h, v8u32) << 16;
#endif
  v8f v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}
template <typename T>
GRPO_INLINE v8f load8(const T* p) {  // other weight types: each value read as fp32
  v8f v;
  for (int u = 0; u < 8; ++u) v[u] = static_cast<float>(p[u]);
  return v;
}
GRPO_INLINE float tree(const v8f& c) { return ((c[0] + c[1]) + (c[2] + c[3])) + ((c[4] + c[5]) + (c[6] + c[7])); }

// sum_k a[k] b[k] in the order above.
template <typename T>
GRPO_INLINE float dot(const float* a, const T* b, int64_t K) {
  v8f acc = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) acc += load8(a + k) * load8(b + k);
  float s = tree(acc);
  for (; k < K; ++k) s += a[k] * static_cast<float>(b[k]);
  return s;
}

// out[r * stride + c] = dot(a[r], b[c], K) for R rows a and C rows b, each b vector read once for
// the R rows: R x C sums in flight (the latency of one addition hides behind the others), each in
// the order above exactly.
template <int R, int C, typename T>
GRPO_INLINE void dot_tile(const float* const* a, const T* const* b, int64_t K, float* out, int64_t stride) {
  v8f acc[R][C] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    v8f bv[C];
    for (int c = 0; c < C; ++c) bv[c] = load8(b[c] + k);
    for (int r = 0; r < R; ++r) {
      const v8f av = load8(a[r] + k);
      for (int c = 0; c < C; ++c) acc[r][c] += av * bv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      float s = tree(acc[r][c]);
      for (int64_t t = k; t < K; ++t) s += a[r][t] * static_cast<float>(b[c][t]);
      out[r * stride + c] = s;
    }
}

}  // namespace grpo::model::invariant::cpu

// Elementwise kernels over rows in 16-byte pieces: a warp per row, each lane taking Pack<T>::kSize
// values (8 bf16, 4 fp32) in one load where an element at a time takes eight, and the row index
// from the grid rather than from a 64-bit division per element. Each value is computed by the
// same expression as in an element-at-a-time kernel, so the two give the same bits; the packed
// form applies where rows_in_packs says so (every row start 16-byte aligned).
#pragma once

#include <cstdint>
#include <initializer_list>

namespace grpo::model {

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// Blocks of kPackRows warps, one row each.
constexpr int kPackRows = 8;

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& x) {
  *reinterpret_cast<Pack<T>*>(p) = x;
}

// Whether rows of `width` values of `elem_size` bytes, each tensor given as (first value, row
// stride in values), can all be read and written in packs: every pointer 16-byte aligned, the
// width and every stride a multiple of the pack.
inline bool rows_in_packs(int64_t width, int64_t elem_size, std::initializer_list<std::pair<const void*, int64_t>> rows) {
  const int64_t pack = 16 / elem_size;
  if (16 % elem_size != 0 || width % pack != 0) return false;
  for (const auto& [ptr, stride] : rows)
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0 || stride % pack != 0) return false;
  return true;
}

// The launch of a packed kernel over M rows: (32, kPackRows) threads a block.
inline dim3 pack_blocks(int64_t M) { return dim3((unsigned)((M + kPackRows - 1) / kPackRows)); }
inline dim3 pack_threads() { return dim3(32, kPackRows); }

}  // namespace grpo::model

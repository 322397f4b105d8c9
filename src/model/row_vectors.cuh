// Elementwise kernels over rows in 16-byte packs: a thread takes Pack<T>::kSize values (8 bf16, 4
// fp32) in one load where an element at a time takes eight, and finds its row with one 32-bit
// division a pack rather than a 64-bit one a value. A thread a pack keeps every row's packs in
// flight at once, so a decode step's few rows take one memory round trip. Each value is computed
// by the same expression as in an element-at-a-time kernel, so the two give the same bits; the
// packed form applies where rows_in_packs says so. Kernels that walk a row by its columns (a
// row's indices divided out once) take a warp a row: kWarpRows rows a block.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <utility>

namespace grpo::model {

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& x) {
  *reinterpret_cast<Pack<T>*>(p) = x;
}

// Whether M rows of `width` values of `elem_size` bytes, each tensor given as (first value, row
// stride in values), can all be read and written in packs: every pointer 16-byte aligned, the
// width and every stride a multiple of the pack, and the packs countable in 32 bits.
inline bool rows_in_packs(int64_t M, int64_t width, int64_t elem_size,
                          std::initializer_list<std::pair<const void*, int64_t>> rows) {
  const int64_t pack = 16 / elem_size;
  if (16 % elem_size != 0 || width % pack != 0 || M * (width / pack) >= (int64_t(1) << 31)) return false;
  for (const auto& [ptr, stride] : rows)
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0 || stride % pack != 0) return false;
  return true;
}

// Thread i's pack: its row and its first column, for rows of `width` values (rows_in_packs held).
struct PackAt {
  int64_t row, col;
  bool valid;
};
template <typename T>
__device__ __forceinline__ PackAt pack_at(int64_t M, int64_t width) {
  const uint32_t per_row = (uint32_t)(width / Pack<T>::kSize);
  const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if ((uint64_t)i >= (uint64_t)M * per_row) return {0, 0, false};
  return {(int64_t)(i / per_row), (int64_t)(i % per_row) * Pack<T>::kSize, true};
}

constexpr int kPackThreads = 256;
// Blocks of kPackThreads for M rows of width values in packs of T.
template <typename T>
inline unsigned pack_blocks(int64_t M, int64_t width) {
  return (unsigned)((M * (width / Pack<T>::kSize) + kPackThreads - 1) / kPackThreads);
}

// A warp a row: kWarpRows rows a block of (32, kWarpRows) threads.
constexpr int kWarpRows = 8;
inline dim3 warp_row_blocks(int64_t M) { return dim3((unsigned)((M + kWarpRows - 1) / kWarpRows)); }
inline dim3 warp_row_threads() { return dim3(32, kWarpRows); }

}  // namespace grpo::model

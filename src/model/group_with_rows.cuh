// Which group a block row serves, for kernels whose grid has a block row per group that has rows
// (the routed experts' products of a decode step: linear_rows_cuda.cu, expert_tiles_cuda.cu), so
// that the blocks of groups without rows are never launched only to return.
#pragma once

namespace grpo::model {

// The blockIdx.y-th of the E groups that have rows (group g's rows end at ends[g], cumulative), or
// -1 past the last: each warp finds it (the same for all), 32 groups a step. Every lane of the
// warp must call it.
__device__ __forceinline__ int group_with_rows(const int* ends, int E, int lane) {
  int left = blockIdx.y;
  for (int base = 0; base < E; base += 32) {
    const int g = base + lane;
    const unsigned mask = __ballot_sync(0xffffffffu, g < E && ends[g] > (g ? ends[g - 1] : 0));
    const int count = __popc(mask);
    if (left < count) {
      unsigned m = mask;
      for (int i = 0; i < left; ++i) m &= m - 1;  // drop the lowest `left` groups
      return base + __ffs(m) - 1;
    }
    left -= count;
  }
  return -1;
}

}  // namespace grpo::model

// A thread block's stable placement of the rows of one group, for the kernels that group rows on
// the device (the routed experts' tokens, the batch-invariant products' rows): no host
// synchronisation, so CUDA graphs can hold it.
#pragma once

#include <cstdint>

namespace grpo::model {

// Calls place(i, rank) for each row i in [0, M) with is_mine(i), rank being the number of such
// rows before i (row order), and stops once `count` (their number) are placed: a block-wide scan
// per blockDim.x rows (each warp's ballot, then the warps' counts). warp_rows: blockDim.x / 32 ints
// of shared memory. Every thread of the block must call it.
template <typename Mine, typename Place>
__device__ void place_in_row_order(int64_t M, int64_t count, int* warp_rows, Mine is_mine, Place place) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  int64_t placed = 0;
  for (int64_t chunk = 0; chunk < M && placed < count; chunk += blockDim.x) {
    const int64_t i = chunk + threadIdx.x;
    const bool mine = i < M && is_mine(i);
    const unsigned ballot = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) warp_rows[warp] = __popc(ballot);
    __syncthreads();
    int64_t before = 0, total = 0;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) before += warp_rows[w];
      total += warp_rows[w];
    }
    if (mine) place(i, placed + before + __popc(ballot & ((1u << lane) - 1u)));
    placed += total;
    __syncthreads();
  }
}

}  // namespace grpo::model

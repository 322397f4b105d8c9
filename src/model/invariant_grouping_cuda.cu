// Grouping rows by their group id on the device for the batch-invariant grouped products
// (model/invariant_kernels_cuda.h): a stable counting sort and the products' tile tables, with no
// host synchronisation, so that CUDA graphs can hold a decode step's grouping.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <string>

#include "model/block_place.cuh"
#include "model/cuda_launch.h"
#include "model/invariant_kernels_cuda.h"
#include "model/kernel_trial.h"
#include "util/error.h"

namespace grpo::model::invariant::cuda {

namespace {

// Grouping rows by their group id on the device, stable, with no host synchronisation (CUDA
// graphs can hold it). One block counts the rows of each group, lays the groups out in id order
// and clears the slots of the tile tables (tiles of tile_rows rows, and of kWideRows rows when
// wide_tiles is given) that a table sized for the worst case does not use.
constexpr int kGroupThreads = 1024;

__global__ void group_layout_kernel(const int64_t* __restrict__ g, int64_t M, int G, int64_t* __restrict__ offsets,
                                    int64_t* __restrict__ tiles, int64_t max_tiles, int64_t tile_rows,
                                    int64_t* __restrict__ wide_tiles, int64_t max_wide_tiles) {
  extern __shared__ unsigned int counts[];  // G
  for (int e = threadIdx.x; e < G; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x) {
    const int64_t e = g[i];
    CUDA_KERNEL_ASSERT(e >= 0 && e < G);
    if (e >= 0 && e < G) atomicAdd(&counts[e], 1u);  // never outside the array, asserts or not
  }
  __syncthreads();
  __shared__ int64_t used_tiles, used_wide_tiles;
  if (threadIdx.x == 0) {  // offsets[e]: first row of group e; offsets[G + 1 + e], [2G + 2 + e]: its first tiles
    int64_t row = 0, tile = 0, wide = 0;
    for (int e = 0; e < G; ++e) {
      offsets[e] = row;
      offsets[G + 1 + e] = tile;
      offsets[2 * G + 2 + e] = wide;
      row += counts[e];
      tile += (counts[e] + tile_rows - 1) / tile_rows;
      wide += (counts[e] + kWideRows - 1) / kWideRows;
    }
    offsets[G] = row;
    offsets[2 * G + 1] = tile;
    offsets[3 * G + 2] = wide;
    used_tiles = tile;
    used_wide_tiles = wide;
  }
  __syncthreads();
  for (int64_t t = used_tiles + threadIdx.x; t < max_tiles; t += blockDim.x)
    tiles[3 * t] = tiles[3 * t + 1] = tiles[3 * t + 2] = 0;
  if (wide_tiles)
    for (int64_t t = used_wide_tiles + threadIdx.x; t < max_wide_tiles; t += blockDim.x)
      wide_tiles[3 * t] = wide_tiles[3 * t + 1] = wide_tiles[3 * t + 2] = 0;
}

// Group e's tiles of `tile_rows` rows from slot first_tile on, its rows from `first` on.
__device__ void write_tiles(int64_t* __restrict__ tiles, int e, int64_t first, int64_t count, int64_t first_tile,
                           int64_t tile_rows) {
  for (int64_t s = (int64_t)threadIdx.x * tile_rows; s < count; s += (int64_t)blockDim.x * tile_rows) {
    int64_t* t = tiles + 3 * (first_tile + s / tile_rows);
    t[0] = e;
    t[1] = first + s;
    t[2] = min(tile_rows, count - s);
  }
}

// One block per group: its tiles, and each of its rows' place, in row order (a block-wide scan of
// "row i is mine" over the rows, a chunk of blockDim rows at a time).
__global__ void group_place_kernel(const int64_t* __restrict__ g, int64_t M, int G, const int64_t* __restrict__ offsets,
                                   int64_t* __restrict__ tiles, int64_t tile_rows, int64_t* __restrict__ wide_tiles,
                                   int64_t* __restrict__ order, int64_t* __restrict__ group) {
  __shared__ int warp_rows[kGroupThreads / 32];
  const int e = blockIdx.x;
  const int64_t first = offsets[e], count = offsets[e + 1] - first;
  write_tiles(tiles, e, first, count, offsets[G + 1 + e], tile_rows);
  if (wide_tiles) write_tiles(wide_tiles, e, first, count, offsets[2 * G + 2 + e], kWideRows);
  place_in_row_order(M, count, warp_rows, [&](int64_t i) { return g[i] == e; }, [&](int64_t i, int64_t rank) {
    order[first + rank] = i;
    group[first + rank] = e;
  });
}

// Tiles of `tile_rows` rows over `groups` runs of `rows` consecutive rows.
__global__ void contiguous_tiles_kernel(int64_t groups, int64_t rows, int64_t tile_rows, int64_t* __restrict__ tiles) {
  const int64_t per_group = (rows + tile_rows - 1) / tile_rows;
  const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= groups * per_group) return;
  const int64_t e = t / per_group, s = (t % per_group) * tile_rows;
  tiles[3 * t] = e;
  tiles[3 * t + 1] = e * rows + s;
  tiles[3 * t + 2] = min(tile_rows, rows - s);
}

using cuda_launch::stream;
void check_launch(const char* what) { cuda_launch::check("batch-invariant CUDA kernel", what); }

}  // namespace

int64_t grouped_tile_rows(int64_t rows, int64_t groups) {
  // The row counts first: most calls (few rows a group) never read the environment.
  if (rows < 16 * groups || !(kernel_on_trial("tall_tiles") || use_staged_tiles())) return kTileRows;
  return rows >= 48 * groups ? 4 * kTileRows : 2 * kTileRows;
}

GroupedRows group_rows(const Tensor& group_of_row, int64_t groups) {
  const c10::cuda::CUDAGuard guard(group_of_row.device());
  if (groups < 1 || groups > 8192) throw Error("invariant group_rows: " + std::to_string(groups) + " groups (1 to 8192 on CUDA)");
  Tensor g = group_of_row.to(at::kLong).contiguous().view({-1});
  const int64_t M = g.numel();
  GroupedRows out;
  out.order = at::empty({M}, g.options());
  out.group = at::empty({M}, g.options());
  out.tile_rows = grouped_tile_rows(M, groups);
  out.num_tiles = (M + out.tile_rows - 1) / out.tile_rows + groups;  // each group's tiles, at most one partly filled
  out.tiles = at::empty({out.num_tiles, 3}, g.options());
  int64_t* wide = nullptr;
  if (use_wide_products(M, groups)) {
    out.num_wide_tiles = (M + kWideRows - 1) / kWideRows + groups;
    out.wide_tiles = at::empty({out.num_wide_tiles, 3}, g.options());
    wide = out.wide_tiles.data_ptr<int64_t>();
  }
  Tensor offsets = at::empty({3 * (groups + 1)}, g.options());
  group_layout_kernel<<<1, kGroupThreads, groups * sizeof(unsigned int), stream()>>>(
      g.data_ptr<int64_t>(), M, (int)groups, offsets.data_ptr<int64_t>(), out.tiles.data_ptr<int64_t>(), out.num_tiles,
      out.tile_rows, wide, out.num_wide_tiles);
  check_launch("group_layout");
  group_place_kernel<<<(unsigned)groups, kGroupThreads, 0, stream()>>>(
      g.data_ptr<int64_t>(), M, (int)groups, offsets.data_ptr<int64_t>(), out.tiles.data_ptr<int64_t>(), out.tile_rows,
      wide, out.order.data_ptr<int64_t>(), out.group.data_ptr<int64_t>());
  check_launch("group_place");
  return out;
}

Tensor contiguous_tiles(int64_t groups, int64_t rows, at::Device device, int64_t tile_rows) {
  const c10::cuda::CUDAGuard guard(device);
  const int64_t n = groups * ((rows + tile_rows - 1) / tile_rows);
  Tensor tiles = at::empty({n, 3}, at::TensorOptions().dtype(at::kLong).device(device));
  if (n == 0) return tiles;
  contiguous_tiles_kernel<<<(unsigned)((n + 255) / 256), 256, 0, stream()>>>(groups, rows, tile_rows,
                                                                            tiles.data_ptr<int64_t>());
  check_launch("contiguous_tiles");
  return tiles;
}

}  // namespace grpo::model::invariant::cuda

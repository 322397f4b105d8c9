// The batch-invariant fp32 products on CUDA cores (model/invariant_kernels_cuda.h gemm_f32): the MoE
// router's logits (fp32 weights) and LoRA's side paths (fp32 adapters). Built with --fmad=false,
// as the other batch-invariant kernels: a product and a sum round apart.
//
// The order of every output (row m, column n): lane l of a warp sums x[m, k] * w[n, k] for k = l,
// l + 32, ... in order, then the 32 lane sums meet in a fixed tree (xor offsets 16, 8, 4, 2, 1). It
// depends on K alone. In the warp form a block's warp j takes column col0 + j for every row of its
// tile. Spread (adopted, "fp32_products"; "-fp32_products" gives the warp form), the same sums
// cover the device:
//   - K <= 32 (LoRA's B, whose K is the rank): one thread an output, its 32 values in registers,
//     added as the warp's tree adds them (each lane's sum is its one product, or 0);
//   - K > 32 (LoRA's A, the router): a tile's rows split over a third grid dimension, so that a
//     few rows times a few columns (N is the rank: 16) still give every multiprocessor blocks.
// x is read in its own dtype (bf16 or fp32) and widened exactly, so no fp32 copy is made of it.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "model/cuda_launch.h"
#include "model/invariant_kernels_cuda.h"

namespace grpo::model::invariant::cuda {

namespace {

constexpr int kCols = 8;           // the warp form: columns (warps) a block
constexpr int kShortThreads = 128;  // the thread form: columns a block
constexpr int kRows = (int)kTileRows;

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// (weight group, first row, rows) of block x's tile: the table's, or 16 rows of one group.
__device__ __forceinline__ void tile_of(const int64_t* tiles, int64_t M, int64_t& group, int64_t& row0, int64_t& rows) {
  if (tiles) {
    group = tiles[3 * blockIdx.x];
    row0 = tiles[3 * blockIdx.x + 1];
    rows = tiles[3 * blockIdx.x + 2];
  } else {
    group = 0;
    row0 = (int64_t)blockIdx.x * kRows;
    rows = min((int64_t)kRows, M - row0);
  }
}

// Warp j: column blockIdx.y * kCols + j, rows blockIdx.z, blockIdx.z + gridDim.z, ... of the tile.
template <typename X>
__global__ void __launch_bounds__(kCols * 32) gemm_f32_warp_kernel(const X* __restrict__ x, const float* __restrict__ w,
                                                                   float* __restrict__ out, int64_t M, int64_t N,
                                                                   int64_t K, const int64_t* __restrict__ tiles) {
  int64_t group, row0, rows;
  tile_of(tiles, M, group, row0, rows);
  const int lane = threadIdx.x % 32;
  const int64_t n = (int64_t)blockIdx.y * kCols + threadIdx.x / 32;
  if (n >= N) return;
  const float* b = w + (group * N + n) * K;
  for (int64_t r = blockIdx.z; r < rows; r += gridDim.z) {
    const X* a = x + (row0 + r) * K;
    float s = 0;
#pragma unroll 8
    for (int64_t k = lane; k < K; k += 32) s += widen(a[k]) * b[k];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) out[(row0 + r) * N + n] = s;
  }
}

// K <= 32: thread t of block (tile, y) computes column y * kShortThreads + t for every row of the
// tile. v[i] starts as lane i's sum (its one product x[k = i] * w[k = i], or 0 past K); level off
// adds v[i + off] into v[i] for i < off, which is what lane i holds after the warp's xor step (lane
// i + off holds the same sum, its terms swapped: equal in IEEE arithmetic); lane 0 writes v[0].
template <typename X>
__global__ void __launch_bounds__(kShortThreads) gemm_f32_short_kernel(const X* __restrict__ x,
                                                                       const float* __restrict__ w,
                                                                       float* __restrict__ out, int64_t M, int64_t N,
                                                                       int K, const int64_t* __restrict__ tiles) {
  int64_t group, row0, rows;
  tile_of(tiles, M, group, row0, rows);
  const int64_t n = (int64_t)blockIdx.y * kShortThreads + threadIdx.x;
  if (n >= N) return;
  const float* b = w + (group * N + n) * K;
  float wk[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) wk[i] = i < K ? b[i] : 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    const X* a = x + (row0 + r) * K;
    float v[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) {
      float s = 0;
      if (i < K) s += widen(a[i]) * wk[i];
      v[i] = s;
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) v[i] = v[i] + v[i + 16];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = v[i] + v[i + 8];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = v[i] + v[i + 4];
    v[0] = v[0] + v[2];
    v[1] = v[1] + v[3];
    v[0] = v[0] + v[1];
    out[(row0 + r) * N + n] = v[0];
  }
}

template <typename X>
void launch(const X* x, const float* w, float* out, int64_t M, int64_t N, int64_t K, const int64_t* tiles,
            int64_t num_tiles, int64_t tile_rows, bool spread, cudaStream_t stream) {
  if (spread && K <= 32) {
    const dim3 grid((unsigned)num_tiles, (unsigned)((N + kShortThreads - 1) / kShortThreads));
    gemm_f32_short_kernel<X><<<grid, kShortThreads, 0, stream>>>(x, w, out, M, N, (int)K, tiles);
    return;
  }
  const int64_t col_blocks = (N + kCols - 1) / kCols;
  int64_t split = 1;
  if (spread) {  // about four blocks a multiprocessor, at most a row each
    const int64_t want = 4 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    split = std::clamp<int64_t>((want + num_tiles * col_blocks - 1) / (num_tiles * col_blocks), 1, tile_rows);
  }
  const dim3 grid((unsigned)num_tiles, (unsigned)col_blocks, (unsigned)split);
  gemm_f32_warp_kernel<X><<<grid, kCols * 32, 0, stream>>>(x, w, out, M, N, K, tiles);
}

}  // namespace

void gemm_f32(const Tensor& x, const Tensor& w, Tensor& out, int64_t M, int64_t N, int64_t K, const int64_t* tiles,
              int64_t num_tiles, int64_t tile_rows, bool spread) {
  Tensor wf = w.to(at::kFloat).contiguous();
  const bool bf16 = spread && x.scalar_type() == at::kBFloat16;  // read as it is; else an fp32 copy
  Tensor xc = bf16 ? x.contiguous() : x.to(at::kFloat).contiguous();
  if (bf16)
    launch(reinterpret_cast<const __nv_bfloat16*>(xc.data_ptr()), wf.data_ptr<float>(), out.data_ptr<float>(), M, N, K,
           tiles, num_tiles, tile_rows, spread, cuda_launch::stream());
  else
    launch(xc.data_ptr<float>(), wf.data_ptr<float>(), out.data_ptr<float>(), M, N, K, tiles, num_tiles, tile_rows,
           spread, cuda_launch::stream());
  cuda_launch::check("batch-invariant CUDA kernel", "fp32 product");
}

}  // namespace grpo::model::invariant::cuda

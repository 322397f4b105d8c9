// The routed experts' products of a decode step of tens to hundreds of tokens (model/fused_kernels.h,
// fused::grouped_tiles; on trial, "expert_tiles"): each expert's rows, a few to a few tens, times its
// weights. Memory-bound: every expert's weights are read once, and the products are small.
//
// A block per (128 output columns, expert with rows), four warps: the expert's rows in passes of 64
// (one pass at V2-Lite's 24 rows an expert at batch 256), K in tiles of 64 through three stages of
// shared memory (cp.async: the weight tile 128 x 64 and the rows' tile 64 x 64, two tiles loading
// while one is used). Warp w computes the 64 x 32 outputs of columns 32 w .. with bf16 tensor-core
// steps (fp32 sums), skipping the 16-row steps past the expert's rows; the rows past them load as
// zeros. Results rounded to bf16 once.
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "model/cuda_launch.h"
#include "model/fused_kernels_cuda.h"
#include "model/group_with_rows.cuh"
#include "model/mma.cuh"
#include "util/error.h"

namespace grpo::model::fused::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kRows = 64;     // rows a pass
constexpr int kCols = 128;    // output columns a block: 32 a warp
constexpr int kDepth = 64;    // K a tile
constexpr int kStages = 3;
constexpr int kStride = kDepth + 8;  // bf16 a shared row: conflict-free ldmatrix
constexpr int kThreads = 128;
constexpr size_t kSmem = (size_t)kStages * (kRows + kCols) * kStride * sizeof(bf16);

__global__ void __launch_bounds__(kThreads) expert_tiles_kernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
                                                                 bf16* __restrict__ y, int64_t N, int64_t K,
                                                                 const int* __restrict__ ends, int E) {
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Xs = reinterpret_cast<bf16*>(smem);         // [kStages][kRows][kStride]
  bf16* Ws = Xs + kStages * kRows * kStride;        // [kStages][kCols][kStride]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4, mi = lane / 8, ri = lane % 8;
  const int e = group_with_rows(ends, E, lane);  // the expert
  if (e < 0) return;
  const int first = e ? ends[e - 1] : 0, rows_all = ends[e] - first;
  const int64_t n0 = (int64_t)blockIdx.x * kCols;
  const bf16* we = w + (int64_t)e * N * K;
  const int tiles = (int)((K + kDepth - 1) / kDepth);

  for (int r0 = 0; r0 < rows_all; r0 += kRows) {
    const int rows = min(kRows, rows_all - r0);
    const bf16* xr = x + (int64_t)(first + r0) * K;
    // Tile kt into stage s: 8 pieces of 16 bytes a row; rows past the expert's, columns past N and
    // K past its end load as zeros.
    auto load = [&](int kt, int s) {
      const int64_t k0 = (int64_t)kt * kDepth;
      for (int i = tid; i < (kRows + kCols) * (kDepth / 8); i += kThreads) {
        const int row = i / (kDepth / 8), c = i % (kDepth / 8);
        const int64_t k = k0 + 8 * c;
        if (row < kRows) {
          const bool valid = row < rows && k < K;
          cp_async16(Xs + (s * kRows + row) * kStride + 8 * c, valid ? xr + (int64_t)row * K + k : x, valid);
        } else {
          const int n = row - kRows;
          const bool valid = n0 + n < N && k < K;
          cp_async16(Ws + (s * kCols + n) * kStride + 8 * c, valid ? we + (n0 + n) * K + k : w, valid);
        }
      }
    };
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < tiles) load(s, s);
      cp_async_commit();
    }
    float acc[kRows / 16][4][4];
#pragma unroll
    for (int m = 0; m < kRows / 16; ++m)
#pragma unroll
      for (int n = 0; n < 4; ++n) acc[m][n][0] = acc[m][n][1] = acc[m][n][2] = acc[m][n][3] = 0.0f;
    const int msteps = (rows + 15) / 16;

    for (int kt = 0; kt < tiles; ++kt) {
      cp_async_wait<kStages - 2>();
      __syncthreads();  // tile kt is in; every warp is done with tile kt - 1, whose stage refills now
      if (kt + kStages - 1 < tiles) load(kt + kStages - 1, (kt + kStages - 1) % kStages);
      cp_async_commit();
      const int s = kt % kStages;
      const bf16* X = Xs + s * kRows * kStride;
      const bf16* W = Ws + (s * kCols + warp * 32) * kStride;
#pragma unroll
      for (int ks = 0; ks < kDepth / 16; ++ks) {
        // Weights: columns (n) 16 j + ri + 8 (mi / 2), K 16 ks + 8 (mi % 2): two 8-column tiles a load.
        uint32_t b[4][2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          uint32_t r[4];
          ldmatrix_x4(r, W + (16 * j + ri + 8 * (mi >> 1)) * kStride + 16 * ks + 8 * (mi & 1));
          b[2 * j][0] = r[0];
          b[2 * j][1] = r[1];
          b[2 * j + 1][0] = r[2];
          b[2 * j + 1][1] = r[3];
        }
#pragma unroll
        for (int m = 0; m < kRows / 16; ++m) {
          if (m >= msteps) break;
          // Rows 16 m + ri + 8 (mi % 2), K 16 ks + 8 (mi / 2): the A fragment's four 8 x 8 pieces.
          uint32_t a[4];
          ldmatrix_x4(a, X + (16 * m + ri + 8 * (mi & 1)) * kStride + 16 * ks + 8 * (mi >> 1));
#pragma unroll
          for (int n = 0; n < 4; ++n) mma_bf16(acc[m][n], a, b[n]);
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the next pass refills the stages

#pragma unroll
    for (int m = 0; m < kRows / 16; ++m) {
      if (m >= msteps) break;
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const int64_t col = n0 + warp * 32 + n * 8 + 2 * t;
        if (col >= N) continue;
        const int row = 16 * m + g;
        if (row < rows)
          *reinterpret_cast<__nv_bfloat162*>(y + (int64_t)(first + r0 + row) * N + col) =
              __floats2bfloat162_rn(acc[m][n][0], acc[m][n][1]);
        if (row + 8 < rows)
          *reinterpret_cast<__nv_bfloat162*>(y + (int64_t)(first + r0 + row + 8) * N + col) =
              __floats2bfloat162_rn(acc[m][n][2], acc[m][n][3]);
      }
    }
  }
}

// The opt-in above 48 KB of shared memory, once per device.
void prepare(int device) {
  static std::mutex mutex;
  static std::vector<int> done;
  const std::lock_guard<std::mutex> lock(mutex);
  if (std::find(done.begin(), done.end(), device) != done.end()) return;
  cudaFuncSetAttribute(expert_tiles_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmem);
  done.push_back(device);
}

}  // namespace

Tensor grouped_tiles(const Tensor& x, const Tensor& weight, const Tensor& ends) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t E = weight.size(0), N = weight.size(1), K = weight.size(2), rows = x.size(0);
  if (N % 2 != 0) throw Error("fused grouped_tiles: " + std::to_string(N) + " output columns (an even count needed)");
  Tensor y = at::empty({rows, N}, x.options());
  if (rows == 0 || N == 0) return y;
  prepare(x.get_device());
  // A block row per expert with rows: at most one a row, and at most E.
  const dim3 grid((unsigned)((N + kCols - 1) / kCols), (unsigned)std::min(E, rows));
  expert_tiles_kernel<<<grid, kThreads, kSmem, cuda_launch::stream()>>>(
      reinterpret_cast<const bf16*>(x.data_ptr()), reinterpret_cast<const bf16*>(weight.data_ptr()),
      reinterpret_cast<bf16*>(y.data_ptr()), N, K, ends.data_ptr<int>(), (int)E);
  cuda_launch::check("fused kernel", "grouped_tiles");
  return y;
}

}  // namespace grpo::model::fused::cuda

// The batch-invariant products for many rows, on CUDA (a prefill, a training forward over whole
// sequences): the contract of model/invariant_kernels.h, computed in 128 x 128 output tiles staged
// through shared memory, where the kernel of invariant_kernels_cuda.cu, made for decode's few rows,
// reads its operands from global memory for each 16 or 64 rows. Both kernels compute every output
// by the same sequence of operations, so a row's products are the same bits whichever kernel, and
// whichever tile, computed them:
//   - K is cut into kProductParts parts of product_part_length(K) values (a multiple of 32, so the
//     last parts may be empty), whatever M, N or the tile;
//   - within a part, each 32 values of k are two tensor-core steps (m16n8k16, fp32 accumulation)
//     in increasing k: lane (g, t) gives values 8t .. 8t + 3 of its rows to the first and
//     8t + 4 .. 8t + 7 to the second, zero past K; the part's sum starts at 0;
//   - the parts are added in part order (an empty part adds 0), and the sum is rounded once.
// Included by the CUDA files only.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "model/invariant_kernels_cuda.h"

namespace grpo::model::invariant::cuda {

constexpr int kProductParts = 8;
inline int64_t product_part_length(int64_t K) { return (K + 32 * kProductParts - 1) / (32 * kProductParts) * 32; }

// out (M, N) = x (M, K) times w[group] (N, K) transposed, fp32 (bf16 when bf16_out, rounded once).
// x and w bf16, K % 8 == 0, both 16-byte aligned. tiles: null (one group, rows in tiles of
// tile_rows) or a table of num_tiles slots (group, first row, rows <= tile_rows,
// invariant_kernels_cuda.h); slots with 0 rows are skipped. tile_rows: 128 (kWideRows), or 16, 32
// or 64 (decode's grouped products, "staged_tiles").
void wide_gemm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, void* out, bool bf16_out, int64_t M, int64_t N,
                    int64_t K, const int64_t* tiles, int64_t num_tiles, at::Device device, cudaStream_t stream,
                    int64_t tile_rows = kWideRows);

}  // namespace grpo::model::invariant::cuda

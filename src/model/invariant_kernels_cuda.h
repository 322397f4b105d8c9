// The CUDA side of model/invariant_kernels.h (compiled when the CUDA compiler is found, which
// defines GRPO_INVARIANT_CUDA). Same contracts; inputs on one CUDA device.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

namespace grpo::model::invariant::cuda {

using at::Tensor;

Tensor matmul_nt(const Tensor& x, const Tensor& w, std::optional<at::ScalarType> round_to);
// Rows of a product tile of the decode kernel: the m of one tensor-core step.
constexpr int64_t kTileRows = 16;

// Rows of a tile of the wide products (invariant_gemm_cuda.h), and whether products over `rows`
// rows in `groups` groups (1 for a plain product) take that kernel: for at least 1,024 rows and 64
// a group on average (a prefill, a training forward; decode's products keep the kernel made for
// them). Either kernel gives the same bits.
constexpr int64_t kWideRows = 128;
bool use_wide_products(int64_t rows, int64_t groups);
// Whether grouped products of fewer rows (decode's) take the wide kernel too, in tiles of their
// table's 16, 32 or 64 rows staged through shared memory: unless turned off (model/kernel_trial.h,
// "-staged_tiles"; it also takes the 32- and 64-row tiles of "tall_tiles"). The same bits.
bool use_staged_tiles();

// invariant_grouping_cuda.cu:
// Rows a tile of grouped products holds (the decode kernel reads each weight once per tile): 16;
// or, with "staged_tiles" (adopted) or "tall_tiles" (on trial; model/kernel_trial.h), 32 where the groups
// hold 16 rows or more on average and 64 where they hold 48 or more. Either gives the same bits.
int64_t grouped_tile_rows(int64_t rows, int64_t groups);

// Rows grouped by group id (M) int64 in [0, groups), stable, on the device without host
// synchronisation: the grouped order, each grouped row's group, and the products' tile table
// (group, first row, rows) of at most tile_rows = grouped_tile_rows(M, groups) rows a tile, sized
// for the worst case (unused slots hold 0 rows); where use_wide_products(M, groups), a second table
// of tiles of kWideRows rows. A group id out of range stops the kernel with a device-side assertion.
struct GroupedRows {
  Tensor order, group, tiles, wide_tiles;
  int64_t num_tiles = 0, tile_rows = kTileRows, num_wide_tiles = 0;
};
GroupedRows group_rows(const Tensor& group_of_row, int64_t groups);
// The tile table of `groups` runs of `rows` consecutive rows, tiles of at most tile_rows (16 or
// kWideRows).
Tensor contiguous_tiles(int64_t groups, int64_t rows, at::Device device, int64_t tile_rows = kTileRows);
// tiles: of up to tile_rows (16, 32 or 64) rows; wide_tiles: the table of kWideRows-row tiles, or
// undefined (`tiles` serve).
Tensor grouped_matmul_nt(const Tensor& x, const Tensor& w, const Tensor& tiles, int64_t num_tiles, int64_t tile_rows,
                         const Tensor& wide_tiles, int64_t num_wide_tiles, std::optional<at::ScalarType> round_to);
// invariant_fp32_cuda.cu: out (M, N) fp32 = x (M, K) times w[group] (N, K) transposed, w taken as
// fp32: the products whose weight is not bf16 (the router's, LoRA's side paths). tiles: a table as
// grouped_matmul_nt's (num_tiles slots of up to tile_rows rows), or null (tiles of kTileRows rows).
// spread: the forms that cover the device (adopted, "fp32_products"); the same bits either way.
void gemm_f32(const Tensor& x, const Tensor& w, Tensor& out, int64_t M, int64_t N, int64_t K, const int64_t* tiles,
              int64_t num_tiles, int64_t tile_rows, bool spread);
Tensor rms_normalize(const Tensor& x, double eps);
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);  // weight of x's dtype
Tensor swiglu(const Tensor& gate, const Tensor& up);  // of one dtype
Tensor combine_experts(const Tensor& y, const Tensor& order, const Tensor& weights, int64_t k);
Tensor softmax(const Tensor& x);
Tensor log_softmax(const Tensor& x);
Tensor row_sum(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
std::pair<Tensor, Tensor> rope_cos_sin(const Tensor& positions, const Tensor& inv_freq);
// table, start, count: int64 on the device; max_keys: the largest count.
Tensor attention(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& start, const Tensor& count,
                 int64_t max_keys, int64_t block_size, int64_t kv_heads, int64_t key_base, int64_t key_stride,
                 int64_t key_width, int64_t value_base, int64_t value_stride, int64_t value_width, double scale);

}  // namespace grpo::model::invariant::cuda

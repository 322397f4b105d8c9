// Batch-invariant kernels: every output row is computed by the same code, in the same reduction
// order, whatever the other rows, their number, or the row's position among them. Library kernels
// give no such promise (a matrix product may split its reduction by the batch size; a vectorised
// loop and its scalar tail may round a transcendental function differently), so the batch-
// invariant forward (model/batch_invariant.h) computes through these alone wherever a reduction
// or a transcendental function is involved. Inputs of any floating dtype are read exactly; all
// arithmetic is fp32; results are fp32 for the caller to round where the model rounds.
//
// CPU kernels here; on CUDA, those of invariant_kernels_cuda.cu (tensor-core products in fixed
// k order, no split-K), when the build found a CUDA compiler. Both are compiled without
// floating-point contraction, so that no call site fuses a product into an addition where another
// does not.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace grpo::model::invariant {

using at::Tensor;

// x (M, K), w (N, K) -> (M, N) fp32: sum_k x[m, k] w[n, k] in a fixed order; with round_to, that
// result rounded to round_to as .to(round_to) rounds it (on CUDA written so by the product).
Tensor matmul_nt(const Tensor& x, const Tensor& w, std::optional<at::ScalarType> round_to = std::nullopt);

// Rows grouped by the weight they use (the routed experts' tokens, the heads of MLA's absorbed
// products): the rows in group order, and where each group's rows are.
struct RowGroups {
  Tensor order;  // (M) int64: grouped position -> original row; undefined when already grouped
  Tensor group;  // (M) int64: each grouped row's group
  Tensor tiles;  // CUDA: (tiles, 3) int64 (group, first row, rows) on the device; slots may hold 0 rows
  int64_t num_tiles = 0;
  int64_t tile_rows = 16;  // CUDA: the most rows a tile holds
  Tensor wide_tiles;  // CUDA, products of many rows: the same with tiles of up to 128 rows, or undefined
  int64_t num_wide_tiles = 0;
};
// Groups rows by `group_of_row` (M) int64 in [0, groups), stable. On CUDA without host
// synchronisation (CUDA graphs can hold it); the tile table is then sized for the worst case.
RowGroups group_rows(const Tensor& group_of_row, int64_t groups);
// Rows already grouped: `groups` runs of `rows_per_group` rows (no host sync).
RowGroups contiguous_groups(int64_t groups, int64_t rows_per_group, at::Device device);
// x (M, K) in group order, w (G, N, K): grouped row m times w[group[m]], (M, N) fp32, each row as
// matmul_nt would compute it alone.
Tensor grouped_matmul_nt(const Tensor& x, const Tensor& w, const RowGroups& groups,
                         std::optional<at::ScalarType> round_to = std::nullopt);

// x (M, D) -> x * rsqrt(mean(x^2) + eps), fp32 (RMSNorm before its weight).
Tensor rms_normalize(const Tensor& x, double eps);
// RMSNorm: weight * rms_normalize(x) rounded to x's dtype, the product rounded as ATen rounds it
// (one kernel on CUDA).
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);

// Row-wise softmax, log-softmax and sum of fp32 (M, D).
Tensor softmax(const Tensor& x);
Tensor log_softmax(const Tensor& x);
Tensor row_sum(const Tensor& x);  // (M)

// Elementwise, fp32 out: x * sigmoid(x), and sigmoid(x).
Tensor silu(const Tensor& x);
// SwiGLU's product: silu(gate) rounded to up's dtype, times up (one kernel on CUDA).
Tensor swiglu(const Tensor& gate, const Tensor& up);

// The routed experts' outputs summed per token: y (N * k, H) holds the (token, choice) pairs'
// outputs in grouped order, `order` (N * k) the pair n * k + j of each grouped row, `weights`
// (N * k) fp32 the pairs' routing weights. Token n gets the sum over j = 0 .. k-1, in that order,
// of y's row times its weight rounded to y's dtype, each addition rounded to y's dtype (as the
// ordinary forward's index_add does). (N, H) in y's dtype.
Tensor combine_experts(const Tensor& y, const Tensor& order, const Tensor& weights, int64_t k);
Tensor sigmoid(const Tensor& x);

// RoPE angles: cos and sin of position * inv_freq, each (N, d/2) fp32, for positions (N) int64.
std::pair<Tensor, Tensor> rope_cos_sin(const Tensor& positions, const Tensor& inv_freq);

// Where attention reads its keys: token n attends to keys 0 .. num_keys[n]-1 of its sequence,
// key j living in cache row table[table_start[n] + j / block_size] * block_size + j % block_size
// (a paged cache; a contiguous one is block_size 1 with table = row numbers).
struct KeyLayout {
  Tensor table;        // int64
  Tensor table_start;  // (N) int64
  Tensor num_keys;     // (N) int64, >= 1
  int64_t block_size = 1;
  int64_t max_keys = -1;  // set by checked_keys: the layout is valid and on the queries' device
  bool query_runs = false;  // set by checked_keys: consecutive tokens read one table, two or more a run on average
};
// Checks every token's keys against a cache of `cache_rows` rows (on the host, where the layout
// is built) and moves the layout to `device`: one check and one copy per forward, not per layer.
KeyLayout checked_keys(const KeyLayout& keys, int64_t cache_rows, at::Device device);

// Where a query head finds its key and value inside a cache row: kv head g's key is the
// key_width values from key_base + g * key_stride, its value the value_width values from
// value_base + g * value_stride; query head h reads kv head h / (heads / kv_heads).
struct HeadLayout {
  int64_t kv_heads = 1, key_base = 0, key_stride = 0, key_width = 0, value_base = 0, value_stride = 0,
          value_width = 0;
};

// Softmax attention of queries q (N, heads, key_width) over the cache rows `cache` (S, width):
// scores q.k * scale, softmax over the token's keys in key order, the weighted sum of values.
// Returns (N, heads, value_width) fp32.
Tensor attention(const Tensor& q, const Tensor& cache, const KeyLayout& keys, const HeadLayout& heads, double scale);

}  // namespace grpo::model::invariant

// The CUDA side of model/fused_kernels.h (compiled when the CUDA compiler is found). Inputs on one
// CUDA device; the shapes are checked by the callers in model/fused_kernels.cpp.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace grpo::model::fused::cuda {

using at::Tensor;

// x (B, T, heads, d), last stride 1; cos, sin contiguous (B, T, 1, d / 2) of x's dtype.
Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, bool interleave);

// x + y and the RMSNorm of that sum: x, y contiguous of one shape and dtype, weight (x.size(-1))
// contiguous of that dtype. Returns {sum, normed}.
std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& weight, double eps);

// MLA's decode step between its projections and its attention: q (B, heads, dn + dr), q_lat (heads,
// B, r), comp (B, r + dr), each last stride 1; norm_weight (r), cos and sin (B, 1, 1, dr / 2)
// contiguous; slots (B) int64; cache (S, r + dr) contiguous; all of q's dtype. Writes cache rows
// slots[b] and returns qc (B, heads, r + dr).
Tensor mla_decode_prologue(const Tensor& q, const Tensor& q_lat, const Tensor& comp, const Tensor& norm_weight,
                           double eps, const Tensor& cos, const Tensor& sin, bool interleave, const Tensor& slots,
                           Tensor& cache);

struct ExpertGroups {
  Tensor token;    // (N k) int64: the token of each grouped row, rows grouped by expert, pair order within
  Tensor inverse;  // (N k) int64: the grouped row of each (token, slot) pair
  Tensor counts;   // (E) int64: rows per expert
  Tensor ends;     // (E) int32: the end of each expert's rows (the grouped GEMMs' offsets)
};
ExpertGroups group_by_expert(const Tensor& experts, int64_t num_experts);
// y (N k, H) grouped rows; weights (N, k) fp32; shared (N, H) or undefined.
Tensor combine_experts(const Tensor& y, const Tensor& inverse, const Tensor& weights, int64_t k, const Tensor& shared);

// logits (N, E) fp32; bias (E) fp32 when noaux_tc; E <= 512, groups <= 32 dividing E, k <= 32.
struct Routing {
  Tensor scores;   // (N, E) fp32
  Tensor experts;  // (N, k) int64, best first
  Tensor weights;  // (N, k) fp32
};
Routing route(const Tensor& logits, const Tensor& bias, int64_t k, int64_t groups, int64_t topk_group, bool sigmoid,
              bool noaux_tc, bool group_limited, bool normalise, double scaling);

// y = x W^T (+ bias) for x (..., K) of at most 8 rows, bf16: x and weight (N, K) contiguous and
// 16-byte aligned, K % 8 == 0, bias (N) or undefined (model/linear_rows_cuda.cu).
Tensor linear_rows(const Tensor& x, const Tensor& weight, const Tensor& bias, bool dependent);
// y (rows, N): group e's rows of x (rows, K) times weight[e] (E, N, K) transposed, the groups' rows
// ending at ends (E) int32 contiguous, at most 8 a group; bf16 as linear_rows.
Tensor grouped_rows(const Tensor& x, const Tensor& weight, const Tensor& ends, bool dependent);
// The same product for any count of rows a group, in tiles of 64 rows x 128 columns; bf16 as
// linear_rows, N even (model/expert_tiles_cuda.cu).
Tensor grouped_tiles(const Tensor& x, const Tensor& weight, const Tensor& ends);

// One token per row from softmax(logits / temperature[b]) at the uniform number uniform[b] (greedy
// where the temperature is 0), and its log-probability under softmax(logits): logits (B, V) fp32
// contiguous, temperature and uniform (B) fp32 contiguous (model/sampling_cuda.cu).
std::pair<Tensor, Tensor> sample(const Tensor& logits, const Tensor& temperature, const Tensor& uniform);

}  // namespace grpo::model::fused::cuda

// Fused CUDA kernels for the rollout engine's ordinary (not batch-invariant) forwards.
//
// A decode step at small batches is bound by kernel launches, not bytes: an ATen RMSNorm is eight
// kernels, a RoPE seven, an MoE layer's grouping of tokens by expert and weighted sum a dozen.
// These replace each chain with one kernel. They have no backward, so the layers use them only
// inside a Scope (the rollout engine opens one around its forwards), with gradients off, on CUDA.
// Training forwards never use them: the policy's own forward and its recomputed log-probs run the
// same ATen kernels as before.
//
// Results: RoPE, SwiGLU and the experts' combination round where the ATen chains round and agree
// with them to the bit; RMSNorm sums a row's squares in another order (fp32), so it agrees to
// rounding.
#pragma once

#include <ATen/ATen.h>

#include <utility>


#include "config/model_config.h"
#include "util/scoped_flag.h"

namespace grpo::model {
struct RopeTables;
}

namespace grpo::model::fused {

using at::Tensor;

// Layers use the fused kernels only while a Scope with `on` is alive on this thread.
using Scope = ScopedFlag<struct FusedKernelsTag>;

// A Scope is on, gradients are off, x is on CUDA and the kernels were built.
bool active(const Tensor& x);

// Each returns an undefined tensor where its kernel does not apply (dtype, shape): the caller
// then runs its ATen form.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);  // weight * (x / rms(x) in x's dtype)
Tensor rope(const Tensor& x, const RopeTables& rope, bool interleave);  // as apply_rope
Tensor swiglu(const Tensor& gate, const Tensor& up);                   // silu(gate) * up

// A decoder layer's residual add and the RMSNorm after it in one kernel (adopted, "add_rms_norm"):
// {x + y, weight * (x + y) / rms(x + y)}, the values of the add and of rms_norm above, bit for bit.
// Empty where it does not apply (x and y not alike, weight not of their width and dtype).
std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& weight, double eps);

// MLA's decode step between its projections and its attention (model/deepseek.cpp; adopted,
// "mla_decode_prologue"), one kernel where the chain runs seven: from the query projection q (B,
// heads, dn + dr), its latent part q_lat = q_nope W_uk (heads, B, r) and kv_a_proj's output comp (B,
// r + dr), writes cache rows write_slots[b] = [RMSNorm(comp[b, :r]) | RoPE(comp[b, r:])] and returns
// qc (B, heads, r + dr) = [q_lat | RoPE(q_pe)]: the chain's values (this RMSNorm and RoPE are the
// fused kernels'), bit for bit.
Tensor mla_decode_prologue(const Tensor& q, const Tensor& q_lat, const Tensor& comp, const Tensor& norm_weight,
                           double eps, const RopeTables& rope, bool interleave, const Tensor& write_slots,
                           Tensor& cache);

// The routed pairs (N, k) grouped by expert for grouped GEMMs, in pair order within an expert.
struct ExpertGroups {
  Tensor token;    // (N k) int64: the token of each grouped row
  Tensor inverse;  // (N k) int64: the grouped row of each pair
  Tensor counts;   // (E) int64: rows per expert
  Tensor ends;     // (E) int32: the end of each expert's rows (the offsets of at::_grouped_mm)
};
ExpertGroups group_by_expert(const Tensor& experts, int64_t num_experts);
// sum over slots j of (y[inverse[n, j]] * weights[n, j]) in x's dtype, plus `shared` (N, H) if
// defined: the MoE's output, as (y * w).to(dtype) index-added into zeros, then + shared.
Tensor combine_experts(const Tensor& y, const ExpertGroups& groups, const Tensor& weights, const Tensor& shared);

// The router after its fp32 logits (N, E): the gate scores, the k chosen experts (best first) and
// their weights, as RouterImpl computes them with ATen (softmax or sigmoid scores, greedy,
// group-limited or noaux_tc selection, normalised, scaled), in one kernel. Undefined members where
// it does not apply (logits not fp32 on CUDA, more than 512 experts, 32 groups or 32 chosen).
struct Routing {
  Tensor scores, experts, weights;
};
Routing route(const Tensor& logits, const Tensor& bias, const ModelConfig& config);

// A linear layer y = x W^T (+ bias) over a decode step's few rows (at most 8) in bf16 (adopted,
// "linear_rows"): a warp an output column, reading the weights once at close to the copy bandwidth
// where cuBLAS's tiles for so few rows do not; the products summed in fp32 in another order, so
// it agrees with at::linear to rounding. Undefined where it does not apply (more rows, not bf16,
// x or weight not contiguous or not 16-byte aligned, K not a multiple of 8).
Tensor linear_rows(const Tensor& x, const Tensor& weight, const Tensor& bias);
// The routed experts' products of such a step (with it): y (rows, N) whose rows of group
// e (rows ends[e - 1] .. ends[e] - 1 of x (rows, K), as ExpertGroups::ends) are those rows times
// weight[e] (E, N, K) transposed. Meant for at most 8 rows a group (at most 8 tokens, each routed to
// an expert once); a group of more takes a pass over its weights per 8 rows. Undefined where it
// does not apply (as linear_rows; ends not (E) int32).
Tensor grouped_rows(const Tensor& x, const Tensor& weight, const Tensor& ends);
// The routed experts' products of a decode step of more tokens, the same y (on trial,
// "expert_tiles"): a block per 128 output columns of an expert with rows, its rows in passes of 64,
// its weights read once a pass through a three-stage pipeline, for the step's tens of rows an
// expert where the grouped GEMM's tiles leave bandwidth unused. Undefined where it does not apply
// (as grouped_rows, or N odd).
Tensor grouped_tiles(const Tensor& x, const Tensor& weight, const Tensor& ends);

// The rollout engine's sampler without top-k or top-p (rollout/sampling.h) in one kernel, outside
// any Scope (adopted, "fused_sampler"): per row b of logits (B, V) fp32, one token drawn from
// softmax(logits[b] / temperature[b]) by the inverse CDF at uniform[b] in [0, 1), or the first
// largest logit where temperature[b] is 0, and its log-probability under softmax(logits[b]):
// {tokens (B) int64, log-probabilities (B) fp32}. The chain's draw, but for ties at rounding where
// the cumulative sums are formed in another order; a row's draw does not depend on its batch.
// Empty where it does not apply (not CUDA, logits not (B, V) fp32 contiguous, temperature or
// uniform not (B) fp32 on its device).
std::pair<Tensor, Tensor> sample(const Tensor& logits, const Tensor& temperature, const Tensor& uniform);

}  // namespace grpo::model::fused

// Routed mixture-of-experts feed-forward, shared by DeepSeekMoE (shared + routed experts,
// group-limited or bias-corrected top-k) and Qwen3-MoE (softmax top-k, norm_topk_prob, no shared
// experts). The routed experts are stored stacked, `mlp.experts.gate_up_proj` (E, 2*I, H) and
// `mlp.experts.down_proj` (E, H, I), so that routed work runs as one product per expert over the
// tokens sorted by expert; checkpoint I/O (model/checkpoint.h) maps to and from HF's per-expert
// tensors.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "config/model_config.h"
#include "model/layers.h"

namespace grpo::model {

struct RouterImpl : torch::nn::Module {
  explicit RouterImpl(const ModelConfig& c);
  struct Routing {
    Tensor experts;  // (N, k) int64
    Tensor weights;  // (N, k) fp32: unbiased scores, normalised if norm_topk_prob, times routed_scaling_factor
    Tensor scores;   // (N, E) fp32 gate scores (for load statistics and auxiliary losses)
    Tensor own_experts;  // (N, k) int64: the router's own choice when `experts` was replayed; else undefined
  };
  // x (N, H) -> routing of each of the N tokens to k experts. `replay` (N, k) int64, when defined,
  // imposes the experts (routing replay: those that served the tokens in the rollout); the weights
  // are still this router's scores of them, so the gate is trained as usual.
  Routing forward(const Tensor& x, const Tensor& replay = {});
  // Gate scores (N, E) fp32 -> the chosen experts (N, k) int64, in topk's order: the scores plus
  // e_score_correction_bias (noaux_tc), limited to the best topk_group groups (group-limited and
  // noaux_tc with n_group > 1), then the top k.
  Tensor top_experts(const Tensor& scores) const;
  Tensor weight;                   // (E, H) fp32 in every model dtype
  Tensor e_score_correction_bias;  // (E) fp32 buffer; noaux_tc only; selection only
  ModelConfig config;
};
TORCH_MODULE(Router);

struct RoutedExpertsImpl : torch::nn::Module {
  RoutedExpertsImpl(int64_t num_experts, int64_t hidden, int64_t intermediate);
  // x (N, H), experts/weights (N, k), counts (E) tokens per expert (computed when undefined) ->
  // sum_k weight * expert(x), (N, H). Tokens are sorted by expert and each expert runs once over its contiguous block: one
  // grouped GEMM on CUDA in bf16 (no host synchronisation, so CUDA graphs can capture it), a
  // matmul per expert otherwise (GRPO_MOE_LOOP=1 forces the latter, for comparison).
  Tensor forward(const Tensor& x, const Tensor& experts, const Tensor& weights, const Tensor& counts = {});
  // The experts' MLPs over rows xs (M, H) already grouped by expert, counts (E) rows each; `ends`
  // (E) int32, the cumulative counts, when the caller has them (else computed) -> (M, H).
  // `few_rows`: at most 8 rows an expert (a decode step of at most 8 tokens), for the products of
  // so few rows on trial (model/fused_kernels.h, grouped_rows).
  Tensor products(const Tensor& xs, const Tensor& counts, const Tensor& ends, bool few_rows = false) const;
  // Tokens routed to each of `num_experts` experts, (E) int64; no host synchronisation.
  static Tensor count(const Tensor& experts, int64_t num_experts);
  bool use_grouped_mm(const Tensor& x) const;
  Tensor swiglu(const Tensor& gate_up) const;
  Tensor gate_up_proj;  // (E, 2*I, H): gate rows then up rows
  Tensor down_proj;     // (E, H, I)
  int64_t num_experts, intermediate;

  // LoRA on the stacked weights, as PEFT adapts transformers' fused expert parameters: per expert
  // gate_up_proj[e] + scaling * gate_up_lora_B[e] gate_up_lora_A[e] (and the same for down_proj),
  // computed as a low-rank side path (see forward). Adapters fp32; undefined when absent.
  // `rank_gate_up` / `rank_down` 0 leaves that weight without an adapter.
  void add_lora(int64_t rank_gate_up, double scaling_gate_up, int64_t rank_down, double scaling_down, at::Generator gen);
  Tensor effective_gate_up() const;
  Tensor effective_down() const;
  Tensor gate_up_lora_A, gate_up_lora_B;  // (E, r, H), (E, 2*I, r)
  Tensor down_lora_A, down_lora_B;        // (E, r, I), (E, H, r)
  double gate_up_lora_scaling = 0, down_lora_scaling = 0;
  bool lora_enabled = true;

  // The rollout engine's FP8 copies of the effective stacks, one scale per expert output row
  // (model/fp8.h), used inside an fp8::Scope.
  fp8::Weight fp8_gate_up, fp8_down;
};
TORCH_MODULE(RoutedExperts);

struct MoEImpl : torch::nn::Module {
  explicit MoEImpl(const ModelConfig& c);
  // (B, T, H) -> (B, T, H). `routing`, when given, receives this forward's routing over the
  // N = B*T tokens in (batch, position) order (its scores keep their graph: balance losses).
  // `replay` (N, k) int64, when defined, imposes the experts (RouterImpl::forward).
  Tensor forward(const Tensor& x, RouterImpl::Routing* routing = nullptr, const Tensor& replay = {});
  Router gate{nullptr};
  RoutedExperts experts{nullptr};
  MLP shared_experts{nullptr};  // null when n_shared_experts == 0
};
TORCH_MODULE(MoE);

}  // namespace grpo::model

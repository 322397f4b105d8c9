// The DeepSeek-V2/V3 policy: MLA attention with (YaRN) RoPE, DeepSeekMoE (shared + routed experts,
// group-limited top-k, e_score_correction_bias for selection only), RMSNorm, SwiGLU, and the
// weights of the multi-token-prediction (MTP) modules.
//
// Parameter names equal Hugging Face's (`model.layers.3.self_attn.kv_b_proj.weight`), except that
// each MoE layer stores its routed experts stacked: `mlp.experts.gate_up_proj` (E, 2*I, H) and
// `mlp.experts.down_proj` (E, H, I), so that routed work runs as one matmul per expert over the
// tokens sorted by expert. Checkpoint I/O (model/checkpoint.h) maps to and from HF's per-expert
// tensors.
//
// Rotary layout: DeepSeek rotates adjacent pairs (x0,x1),(x2,x3),...; we rotate them and write the
// result de-interleaved ([evens | odds]) for both queries and keys, as transformers does. q.k is
// unchanged by a permutation applied to both, so the attention is exactly DeepSeek's.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <vector>

#include "config/model_config.h"
#include "model/linear.h"

namespace grpo::model {

using at::Tensor;

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps);
  // x (..., dim) -> same shape and dtype; normalised in fp32 like transformers.
  Tensor forward(const Tensor& x);
  Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t hidden, int64_t intermediate);
  Tensor forward(const Tensor& x);
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

// Per-token cos/sin tables for the rotary part of queries and keys.
struct RopeTables {
  Tensor cos, sin;  // (B, T, 1, rope_dim/2), model dtype, already times YaRN's attention factor
};

// How queries may attend: causal only (right-padded or unpadded batches) or an explicit mask.
struct AttentionMask {
  std::optional<Tensor> allowed;  // bool (B, 1, T, T); nullopt = plain causal
};

struct MLAImpl : torch::nn::Module {
  explicit MLAImpl(const ModelConfig& c);
  // x (B, T, H) -> (B, T, H). When `latent` is given it receives what a KV cache keeps of each
  // token: [normalised kv latent | rotated rope key], (B, T, kv_lora_rank + qk_rope_head_dim).
  Tensor forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* latent = nullptr);

  // One decode step in the absorbed form ("MQA mode": kv_b_proj folded into the query and the
  // output), reading the latent cache instead of expanding keys and values. x (B, H): one new
  // token per row; its [latent | rope key] is written to rows `write_slots` (B) of `cache`
  // (S, kv_lora_rank + qk_rope_head_dim); row b attends to the cache rows
  // gather_idx[b * Lpad .. (b + 1) * Lpad), those where `invalid` (B, 1, Lpad) is true masked.
  // Returns (B, H). No host synchronisation, so a CUDA graph can capture it.
  Tensor decode_absorbed(const Tensor& x, const RopeTables& rope, Tensor cache, const Tensor& write_slots,
                         const Tensor& gather_idx, const Tensor& invalid, int64_t Lpad);

  int64_t num_heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank;
  double softmax_scale;
  bool rope_interleave;
  Linear q_proj{nullptr};                            // when q_lora_rank is null
  Linear q_a_proj{nullptr}, q_b_proj{nullptr};        // when q_lora_rank is set
  RMSNorm q_a_layernorm{nullptr};
  Linear kv_a_proj_with_mqa{nullptr}, kv_b_proj{nullptr}, o_proj{nullptr};
  RMSNorm kv_a_layernorm{nullptr};
};
TORCH_MODULE(MLA);

// Rotates `x` (..., rope_dim) by the tables; see the layout note at the top of this file.
Tensor apply_rope(const Tensor& x, const RopeTables& rope, bool interleave);

struct RouterImpl : torch::nn::Module {
  explicit RouterImpl(const ModelConfig& c);
  struct Routing {
    Tensor experts;  // (N, k) int64
    Tensor weights;  // (N, k) fp32: unbiased scores, normalised if norm_topk_prob, times routed_scaling_factor
    Tensor scores;   // (N, E) fp32 gate scores (for load statistics and auxiliary losses)
  };
  // x (N, H) -> routing of each of the N tokens to k experts.
  Routing forward(const Tensor& x);
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
};
TORCH_MODULE(RoutedExperts);

struct MoEImpl : torch::nn::Module {
  explicit MoEImpl(const ModelConfig& c);
  // (B, T, H) -> (B, T, H). `routing`, when given, receives this forward's routing over the
  // N = B*T tokens in (batch, position) order (its scores keep their graph: balance losses).
  Tensor forward(const Tensor& x, RouterImpl::Routing* routing = nullptr);
  Router gate{nullptr};
  RoutedExperts experts{nullptr};
  MLP shared_experts{nullptr};  // null when n_shared_experts == 0
};
TORCH_MODULE(MoE);

struct DecoderLayerImpl : torch::nn::Module {
  // `mtp`: also registers the MTP module parts (embed_tokens, enorm, hnorm, eh_proj, shared_head).
  DecoderLayerImpl(const ModelConfig& c, int64_t layer_idx, bool mtp);
  Tensor forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* latent = nullptr,
                 RouterImpl::Routing* routing = nullptr);
  // The feed-forward half: dense MLP or MoE, whichever this layer has (`routing`: see MoEImpl).
  Tensor feed_forward(const Tensor& x, RouterImpl::Routing* routing = nullptr);

  MLA self_attn{nullptr};
  MLP dense_mlp{nullptr};  // registered as "mlp" when the layer is dense
  MoE moe{nullptr};        // registered as "mlp" when the layer is MoE
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  // MTP parts (DeepSeek-V3 checkpoint names); null on ordinary layers.
  torch::nn::Embedding embed_tokens{nullptr};
  RMSNorm enorm{nullptr}, hnorm{nullptr};
  Linear eh_proj{nullptr};
  std::shared_ptr<torch::nn::Module> shared_head;
  RMSNorm shared_head_norm{nullptr};
  Linear shared_head_head{nullptr};
};
TORCH_MODULE(DecoderLayer);

struct DeepseekModelImpl : torch::nn::Module {
  explicit DeepseekModelImpl(const ModelConfig& c);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};  // num_hidden_layers decoder layers, then the MTP modules
  RMSNorm norm{nullptr};
};
TORCH_MODULE(DeepseekModel);

class DeepseekForCausalLM : public torch::nn::Module {
 public:
  explicit DeepseekForCausalLM(ModelConfig config);

  const ModelConfig& config() const { return config_; }

  // input_ids (B, T) int64. attention_mask (B, T), 1 = token, 0 = padding: omit it for unpadded
  // or right-padded batches (plain causal attention is then exact for every real token).
  // position_ids (B, T): default 0..T-1. Returns the final-norm hidden states (B, T, H).
  // `latents`, when given, receives each layer's MLA cache entries (see MLAImpl::forward);
  // `routing` each MoE layer's routing, in layer order.
  Tensor hidden_states(const Tensor& input_ids, const std::optional<Tensor>& attention_mask = std::nullopt,
                       const std::optional<Tensor>& position_ids = std::nullopt,
                       std::vector<Tensor>* latents = nullptr,
                       std::vector<RouterImpl::Routing>* routing = nullptr);
  // Packed rows (several examples per row, for SFT): segment_ids (B, T) int64 names each token's
  // example, and a token attends only to earlier tokens of its own segment; position_ids (B, T)
  // restart at 0 in every segment. Returns log p(targets[b, t] | the segment up to t) in fp32 for
  // every position whose target is >= 0, flattened in row-major order (differentiable).
  Tensor packed_target_logprobs(const Tensor& input_ids, const Tensor& segment_ids, const Tensor& position_ids,
                                const Tensor& targets);
  // hidden (..., H) -> logits (..., V) in the model dtype.
  Tensor logits(const Tensor& hidden);
  // Weight of the output projection (the embedding when tied).
  Tensor lm_head_weight();

  // The trainer's core need: log p(completion_i[j] | prompt_i, completion_i[<j]) for every
  // completion token, in fp32. Sequences are right-padded into one batch; only the positions
  // that predict completion tokens go through the output projection. Empty completions give
  // empty tensors. Differentiable when called with grad mode on.
  std::vector<Tensor> completion_logprobs(const std::vector<std::vector<int64_t>>& prompts,
                                          const std::vector<std::vector<int64_t>>& completions);

  // The same forward with what training also needs, each computed only when asked.
  struct CompletionOptions {
    bool entropy = false;  // per-token entropy of the policy (no graph)
    bool routing = false;  // each MoE layer's routing
  };
  struct CompletionOutputs {
    std::vector<Tensor> logprobs;  // per sequence (C_i), fp32: as completion_logprobs
    std::vector<Tensor> entropy;   // per sequence (C_i), fp32, nats; when asked
    // Per MoE layer, over the right-padded (B, T) batch flattened to B*T tokens, sequence b being
    // prompt_b + completion_b[:-1]; when asked. token_mask (B, T) fp32 marks the real tokens.
    std::vector<RouterImpl::Routing> routing;
    Tensor token_mask;
  };
  CompletionOutputs completion_forward(const std::vector<std::vector<int64_t>>& prompts,
                                       const std::vector<std::vector<int64_t>>& completions,
                                       const CompletionOptions& options);

  // Casts floating-point parameters to `dtype` and moves everything to `device`;
  // e_score_correction_bias stays fp32 (it is compared across experts at fp32 resolution).
  void to_device_dtype(at::Device device, at::ScalarType dtype);
  at::Device device() const;
  at::ScalarType dtype() const;

  // Rotary tables for the given positions (B, T).
  RopeTables rope_tables(const Tensor& position_ids, at::ScalarType dtype) const;

  DeepseekModel model{nullptr};
  Linear lm_head{nullptr};  // null when tie_word_embeddings
  // Activation checkpointing per decoder layer (transformers' gradient_checkpointing): with grad
  // mode on, each layer keeps only its input and runs again in the backward pass. Gradients are
  // those of the plain forward; MoE routing returned from such a forward carries no graph.
  bool gradient_checkpointing = false;

 private:
  Tensor run_layers(const Tensor& ids, const Tensor& pos, const AttentionMask& mask, std::vector<Tensor>* latents,
                    std::vector<RouterImpl::Routing>* routing);
  // log p(target) (and the entropy when `entropy` is given) of hidden rows hs (M, H), the output
  // projection taken in chunks so that (M, V) fp32 logits never exist at once.
  Tensor target_logprobs(const Tensor& hs, const Tensor& targets, Tensor* entropy);

  ModelConfig config_;
  Tensor inv_freq_;  // (rope_dim/2) fp32, CPU
  mutable Tensor inv_freq_device_;  // its copy on the model's device (no host copy inside CUDA graphs)
};

// RoPE inverse frequencies (rope_dim/2), fp32, with YaRN applied when configured; computed the
// way transformers computes them so that the tables agree to the last bit.
Tensor rope_inv_freq(const ModelConfig& c);

}  // namespace grpo::model

// A decoder-only causal language model, as transformers' ...ForCausalLM: token embedding, decoder
// layers (attention + dense SwiGLU MLP or routed MoE, each behind an RMSNorm, with residuals), a
// final RMSNorm and the output projection (tied to the embedding when tie_word_embeddings).
// The attention is the family's: DeepSeek's MLA (model/deepseek.h) or grouped-query attention for
// Llama, Qwen2, Qwen3 and Qwen3-MoE (model/llama.h). Parameter names equal Hugging Face's
// (`model.layers.3.self_attn.q_proj.weight`), except the stacked routed experts (model/moe.h).
//
// Also what training needs of the model: completion log-probs (and entropy, routing) over
// right-padded batches, packed rows for SFT, and activation checkpointing.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>
#include <vector>

#include "config/model_config.h"
#include "model/layers.h"
#include "model/linear.h"
#include "model/moe.h"

namespace grpo::model {

struct DecoderLayerImpl : torch::nn::Module {
  // `mtp`: also registers the MTP module parts (embed_tokens, enorm, hnorm, eh_proj, shared_head).
  DecoderLayerImpl(const ModelConfig& c, int64_t layer_idx, bool mtp);
  Tensor forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* cache_rows = nullptr,
                 RouterImpl::Routing* routing = nullptr, const Tensor& replay = {});
  // The feed-forward half: dense MLP or MoE, whichever this layer has (`routing`, `replay`: see MoEImpl).
  Tensor feed_forward(const Tensor& x, RouterImpl::Routing* routing = nullptr, const Tensor& replay = {});
  // DeepSeek-V3's multi-token prediction module (MTP layers only): combines the hidden states of the
  // depth before (the main model's final-norm output for depth 1) with the embedding of the token
  // one place further ahead, eh_proj([enorm(embed(next_ids)); hnorm(previous)]), and runs them
  // through this layer's attention and feed-forward. Returns this depth's hidden states (B, T, H),
  // which the next depth takes as `previous`.
  Tensor mtp_forward(const Tensor& previous, const Tensor& next_ids, const RopeTables& rope, const AttentionMask& mask,
                     Tensor* cache_rows = nullptr);
  // The module's prediction: shared_head.head(shared_head.norm(h)), in the model dtype.
  Tensor mtp_logits(const Tensor& h);

  std::shared_ptr<AttentionImpl> self_attn;  // MLA (DeepSeek) or grouped-query attention
  MLP dense_mlp{nullptr};  // registered as "mlp" when the layer is dense
  MoE moe{nullptr};        // registered as "mlp" when the layer is MoE
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  // DeepSeek-V3's MTP parts (its checkpoint names); null on ordinary layers.
  torch::nn::Embedding embed_tokens{nullptr};
  RMSNorm enorm{nullptr}, hnorm{nullptr};
  Linear eh_proj{nullptr};
  std::shared_ptr<torch::nn::Module> shared_head;
  RMSNorm shared_head_norm{nullptr};
  Linear shared_head_head{nullptr};
};
TORCH_MODULE(DecoderLayer);

// x (B, T) shifted left by k along the sequence, `fill` in the last k places: at position t, the
// value of position t + k, which is what MTP module k reads there (the token k places ahead).
Tensor shifted_left(const Tensor& x, int64_t k, int64_t fill = 0);

struct DecoderModelImpl : torch::nn::Module {
  explicit DecoderModelImpl(const ModelConfig& c);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};  // num_hidden_layers decoder layers, then the MTP modules
  RMSNorm norm{nullptr};
};
TORCH_MODULE(DecoderModel);

class CausalLM : public torch::nn::Module {
 public:
  explicit CausalLM(ModelConfig config);

  const ModelConfig& config() const { return config_; }
  // Decoder layers whose feed-forward half is routed experts.
  int64_t num_moe_layers() const;

  // input_ids (B, T) int64. attention_mask (B, T), 1 = token, 0 = padding: omit it for unpadded
  // or right-padded batches (plain causal attention is then exact for every real token).
  // position_ids (B, T): default 0..T-1. Returns the final-norm hidden states (B, T, H).
  // `cache_rows`, when given, receives each layer's KV-cache rows (see AttentionImpl::forward);
  // `routing` each MoE layer's routing, in layer order; `replay`, when given, each MoE layer's
  // imposed experts (B*T, k) int64, in layer order (routing replay, RouterImpl::forward).
  Tensor hidden_states(const Tensor& input_ids, const std::optional<Tensor>& attention_mask = std::nullopt,
                       const std::optional<Tensor>& position_ids = std::nullopt,
                       std::vector<Tensor>* cache_rows = nullptr,
                       std::vector<RouterImpl::Routing>* routing = nullptr,
                       const std::vector<Tensor>* replay = nullptr);
  // Packed rows (several examples per row, for SFT): segment_ids (B, T) int64 names each token's
  // example, and a token attends only to earlier tokens of its own segment; position_ids (B, T)
  // restart at 0 in every segment. Returns log p(targets[b, t] | the segment up to t) in fp32 for
  // every position whose target is >= 0, flattened in row-major order (differentiable).
  Tensor packed_target_logprobs(const Tensor& input_ids, const Tensor& segment_ids, const Tensor& position_ids,
                                const Tensor& targets);
  // The same forward, and with `mtp_depths` > 0 also the first mtp_depths MTP modules': module k
  // predicts at position t the token targets[b, t + k] (the token k + 1 places ahead) wherever that
  // target is >= 0 and in t's segment, in row-major order of t. `mtp_detached`: the MTP modules read
  // the main model's hidden states without a gradient (their loss then trains them alone).
  struct PackedLogprobs {
    Tensor logprobs;           // as packed_target_logprobs
    std::vector<Tensor> mtp;   // per depth k = 1..mtp_depths
  };
  PackedLogprobs packed_logprobs(const Tensor& input_ids, const Tensor& segment_ids, const Tensor& position_ids,
                                 const Tensor& targets, int64_t mtp_depths, bool mtp_detached = false);
  // hidden (..., H) -> logits (..., V) in the model dtype.
  Tensor logits(const Tensor& hidden);
  // Weight of the output projection (the embedding when tied).
  Tensor lm_head_weight();
  // MTP module `depth` (1 .. num_nextn_predict_layers); throws naming the depth when there is none.
  DecoderLayerImpl& mtp_module(int64_t depth);

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
    // Routing replay: per sequence, the experts that served it in the rollout (Completion::
    // routed_experts: prompt + completion[:-1] tokens x MoE layers x k), or null for none (then
    // no sequence may have one). The MoE layers use them instead of their own top-k.
    std::vector<const std::vector<int16_t>*> replay_experts;
    // The first mtp_depths MTP modules' log-probs of the completion tokens they predict (depth k
    // predicts completion token j from position prompt + j - k - 1, so from j = max(0, k + 1 -
    // prompt length) on). `mtp_detached`: see packed_logprobs.
    int64_t mtp_depths = 0;
    bool mtp_detached = false;
    // With batch_invariant: the batch-invariant forward's log-probs when they are already known,
    // per sequence (C_i) fp32: the rollout engine's, for these tokens under these very weights,
    // which equal them to the last bit. With replay_experts (the engine's routing records, which
    // are that forward's routing) they stand in for the forward, which is then skipped.
    std::vector<Tensor> invariant_logprobs;
  };
  struct CompletionOutputs {
    std::vector<Tensor> logprobs;  // per sequence (C_i), fp32: as completion_logprobs
    std::vector<Tensor> entropy;   // per sequence (C_i), fp32, nats; when asked
    // Per MoE layer, over the right-padded (B, T) batch flattened to B*T tokens, sequence b being
    // prompt_b + completion_b[:-1]; when asked. token_mask (B, T) fp32 marks the real tokens.
    // With replay, `experts` are the replayed ones and `own_experts` the router's own choice.
    std::vector<RouterImpl::Routing> routing;
    Tensor token_mask;
    std::vector<std::vector<Tensor>> mtp_logprobs;  // [depth - 1][sequence], fp32; when asked
  };
  CompletionOutputs completion_forward(const std::vector<std::vector<int64_t>>& prompts,
                                       const std::vector<std::vector<int64_t>>& completions,
                                       const CompletionOptions& options);

  // Casts floating-point parameters to `dtype` and moves everything to `device`; the MoE router
  // stays fp32 (it is compared across experts at fp32 resolution).
  void to_device_dtype(at::Device device, at::ScalarType dtype);
  at::Device device() const;
  at::ScalarType dtype() const;

  // Rotary tables for the given positions (B, T).
  RopeTables rope_tables(const Tensor& position_ids, at::ScalarType dtype) const;

  DecoderModel model{nullptr};
  Linear lm_head{nullptr};  // null when tie_word_embeddings
  // Activation checkpointing per decoder layer (transformers' gradient_checkpointing): with grad
  // mode on, each layer keeps only its input and runs again in the backward pass. Gradients are
  // those of the plain forward; MoE routing returned from such a forward carries no graph.
  bool gradient_checkpointing = false;
  // Batch-invariant values (model/batch_invariant.h): completion_forward's log-probs come from the
  // batch-invariant forward, equal to the last bit to what the rollout engine computes for the same
  // tokens; their gradient flows through the ordinary forward, which imposes the same experts.
  bool batch_invariant = false;

 private:
  Tensor run_layers(const Tensor& ids, const Tensor& pos, const AttentionMask& mask, std::vector<Tensor>* cache_rows,
                    std::vector<RouterImpl::Routing>* routing, const std::vector<Tensor>* replay = nullptr);
  // CompletionOptions::replay_experts as one (B*T, k) int64 tensor per MoE layer over the
  // right-padded batch of width T; empty without replay.
  std::vector<Tensor> replay_tensors(const std::vector<const std::vector<int16_t>*>& records,
                                     const std::vector<std::vector<int64_t>>& prompts,
                                     const std::vector<std::vector<int64_t>>& completions, int64_t T);
  // log p(target) (and the entropy when `entropy` is given) of hidden rows hs (M, H), the output
  // projection taken in chunks so that (M, V) fp32 logits never exist at once.
  // CompletionOutputs::mtp_logprobs from the main hidden states h (B, T, H) of the right-padded input (B, T).
  std::vector<std::vector<Tensor>> completion_mtp_logprobs(const Tensor& h, const Tensor& input,
                                                           const std::vector<std::vector<int64_t>>& prompts,
                                                           const std::vector<std::vector<int64_t>>& completions,
                                                           const CompletionOptions& options);
  // `mtp_depth` > 0: through MTP module mtp_depth's own head instead of the model's.
  Tensor target_logprobs(const Tensor& hs, const Tensor& targets, Tensor* entropy, int64_t mtp_depth = 0);
  // Runs MTP modules 1..depths over main hidden states h (B, T, H) of ids (B, T) at positions pos;
  // next_ids[k - 1] (B, T) is what module k embeds at each position. Returns each depth's hidden states.
  std::vector<Tensor> run_mtp(const Tensor& h, const std::vector<Tensor>& next_ids, const Tensor& pos,
                              const AttentionMask& mask, bool detached);

  ModelConfig config_;
  Tensor inv_freq_;  // (rope_dim/2) fp32, CPU
  mutable Tensor inv_freq_device_;  // its copy on the model's device (no host copy inside CUDA graphs)
};

}  // namespace grpo::model

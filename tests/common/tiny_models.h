// Tiny random models the engine tests share.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "config/model_config.h"
#include "model/causal_lm.h"
#include "model/checkpoint.h"

namespace grpo::testing {

// DeepSeek-V3 style: q-LoRA, sigmoid noaux_tc routing with groups, YaRN (positions pass the
// original 64), a dense first layer.
inline const char* kTinyV3 = R"({
  "model_type": "deepseek_v3", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "max_position_embeddings": 256, "num_nextn_predict_layers": 0,
  "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}})";

// Qwen2 style: grouped-query attention (4 query heads on 2 key/value heads), q/k/v biases, tied
// embeddings.
inline const char* kTinyQwen2 = R"({
  "model_type": "qwen2", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": true})";

// Qwen3-MoE style: q/k norms, one key/value head, head_dim unlike hidden/heads, softmax top-2 routing
// with a dense middle layer, Llama 3 RoPE scaling (positions pass the original 16).
inline const char* kTinyQwen3Moe = R"({
  "model_type": "qwen3_moe", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
  "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": true, "mlp_only_layers": [1],
  "max_position_embeddings": 256,
  "rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16, "rope_theta": 10000.0}})";

// `config` with its one occurrence of `from` replaced by `to`.
inline std::string replace_in_config(const std::string& config, const std::string& from, const std::string& to) {
  const size_t at = config.find(from);
  if (at == std::string::npos) throw std::runtime_error("tiny config: no '" + from + "' to replace");
  return config.substr(0, at) + to + config.substr(at + from.size());
}

// A config with `n` MTP modules (DeepSeek-V3's multi-token prediction) instead of none.
inline std::string with_mtp_modules(const std::string& config, int n) {
  return replace_in_config(config, "\"num_nextn_predict_layers\": 0", "\"num_nextn_predict_layers\": " + std::to_string(n));
}

// kTinyV3 (or a variant) with the latent widths the paged MLA decode kernel takes (rank 64, rope
// key 16) instead of 16 and 4, so that its bf16 CUDA decode goes through the kernel.
inline std::string with_paged_mla_widths(const std::string& config) {
  return replace_in_config(config, "\"kv_lora_rank\": 16, \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 4",
                           "\"kv_lora_rank\": 64, \"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 16");
}

// Random weights (seed 3) with every matrix scaled by `scale`, biases and buffers drawn wider, so
// that outputs are far from uniform: sampling and routing matter. The draws use their own
// generator: the model does not depend on what the process drew before.
inline std::shared_ptr<model::CausalLM> tiny(const std::string& config, double scale = 8) {
  auto m = std::make_shared<model::CausalLM>(parse_model_config(config, "tiny"));
  model::init_weights(*m, 3);
  at::NoGradGuard g;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (auto& p : m->parameters())
    if (p.dim() > 1) p.mul_(scale);  // far from uniform: sampling and routing matter
  for (auto& kv : m->named_parameters())
    if (kv.key().size() > 5 && kv.key().substr(kv.key().size() - 5) == ".bias") kv.value().uniform_(-0.5, 0.5, gen);
  for (auto& kv : m->named_buffers()) kv.value().uniform_(0, 0.05, gen);
  return m;
}

}  // namespace grpo::testing

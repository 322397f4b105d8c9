// ModelConfig: every field of a Hugging Face DeepseekV2/V3 config.json that changes the math,
// parsed once and checked. Values grpo does not implement are errors naming the key and file,
// never silently ignored. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace grpo {

enum class ScoringFunc { Softmax, Sigmoid };
enum class TopkMethod { Greedy, GroupLimitedGreedy, NoauxTc };

// YaRN context extension (rope_scaling / rope_parameters with type "yarn").
struct YarnScaling {
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0 = absent
  double mscale_all_dim = 0.0;  // 0 = absent
  std::optional<double> attention_factor;
  bool truncate = true;
};

struct ModelConfig {
  std::string model_type;  // "deepseek_v2" | "deepseek_v3"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // dense MLP layers
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;

  // Multi-head latent attention.
  std::optional<int64_t> q_lora_rank;  // nullopt: plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  double rope_theta = 10000.0;
  // DeepSeek rotates adjacent pairs (x0,x1),(x2,x3)...; false: pairs (x_i, x_{i+d/2}).
  bool rope_interleave = true;
  std::optional<YarnScaling> yarn;

  // DeepSeekMoE. n_routed_experts == 0 means every layer is dense.
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  ScoringFunc scoring_func = ScoringFunc::Softmax;
  TopkMethod topk_method = TopkMethod::Greedy;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;

  // Multi-token prediction modules stored as layers num_hidden_layers .. +n-1.
  int64_t num_nextn_predict_layers = 0;

  // Block size of FP8 weight scales when the checkpoint is FP8-quantised (0 = not quantised).
  int64_t fp8_block_rows = 0, fp8_block_cols = 0;

  std::optional<int64_t> bos_token_id, eos_token_id, pad_token_id;

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // DeepSeek's rule: routed experts from layer first_k_dense_replace on, every moe_layer_freq-th.
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // Softmax scale of MLA attention, including YaRN's mscale_all_dim correction.
  double softmax_scale() const;
  // Scale applied to cos/sin by YaRN (1 without YaRN).
  double rope_attention_factor() const;
};

// Parses config.json text; `where` names the file in errors.
ModelConfig parse_model_config(const std::string& json_text, const std::string& where);
// Reads `path` (a config.json, or a directory holding one).
ModelConfig load_model_config(const std::string& path);

}  // namespace grpo

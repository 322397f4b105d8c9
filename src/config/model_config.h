// ModelConfig: every field of a Hugging Face config.json that changes the math, for the model
// types grpo implements (deepseek_v2, deepseek_v3, qwen2, llama, qwen3, qwen3_moe), parsed once
// and checked. Values grpo does not implement are errors naming the key and file,
// never silently ignored. Torch-free.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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

// Llama 3's frequency-dependent RoPE scaling (rope_type "llama3").
struct Llama3Scaling {
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;  // deepseek_v2 | deepseek_v3 | qwen2 | llama | qwen3 | qwen3_moe
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // dense MLP layers
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;

  // Grouped-query attention (every model type but DeepSeek's).
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  bool qkv_bias = false;  // q_proj, k_proj, v_proj carry a bias (Qwen2 always; others by attention_bias)
  bool o_bias = false;    // o_proj carries a bias (attention_bias outside Qwen2)
  bool qk_norm = false;   // Qwen3: RMSNorm over each head of the queries and keys before RoPE

  // Multi-head latent attention (DeepSeek).
  std::optional<int64_t> q_lora_rank;  // nullopt: plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  double rope_theta = 10000.0;
  // DeepSeek rotates adjacent pairs (x0,x1),(x2,x3)...; false: pairs (x_i, x_{i+d/2}).
  bool rope_interleave = true;
  std::optional<YarnScaling> yarn;
  std::optional<Llama3Scaling> llama3;
  double rope_linear_factor = 1.0;  // rope_type "linear": positions divided by the factor

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

  // Qwen3-MoE's layer rule: MoE on layers (i + 1) % decoder_sparse_step == 0 not in mlp_only_layers.
  int64_t decoder_sparse_step = 0;  // 0: DeepSeek's rule (first_k_dense_replace, moe_layer_freq)
  std::vector<int64_t> mlp_only_layers;

  // Multi-token prediction modules stored as layers num_hidden_layers .. +n-1.
  int64_t num_nextn_predict_layers = 0;

  // Block size of FP8 weight scales when the checkpoint is FP8-quantised (0 = not quantised).
  int64_t fp8_block_rows = 0, fp8_block_cols = 0;

  std::optional<int64_t> bos_token_id, eos_token_id, pad_token_id;

  // DeepSeek's multi-head latent attention; otherwise grouped-query attention.
  bool mla() const { return model_type == "deepseek_v2" || model_type == "deepseek_v3"; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // Width of the rotated part of each query/key head.
  int64_t rope_dim() const { return mla() ? qk_rope_head_dim : head_dim; }
  // Whether layer `layer` has routed experts: DeepSeek's rule (from first_k_dense_replace on,
  // every moe_layer_freq-th) or Qwen3-MoE's (decoder_sparse_step, mlp_only_layers).
  bool is_moe_layer(int64_t layer) const;
  // Values one token keeps per layer in the KV cache: [latent | rope key] for MLA, [keys | values]
  // of the key/value heads for grouped-query attention.
  int64_t kv_cache_width() const { return mla() ? kv_lora_rank + qk_rope_head_dim : 2 * num_key_value_heads * head_dim; }
  // Attention softmax scale: 1/sqrt(query head width), with YaRN's mscale_all_dim correction for MLA.
  double softmax_scale() const;
  // The HF architecture class written to config.json ("Qwen2ForCausalLM", ...).
  std::string architecture() const;
  // Scale applied to cos/sin by YaRN (1 without YaRN).
  double rope_attention_factor() const;
};

// Parses config.json text; `where` names the file in errors.
ModelConfig parse_model_config(const std::string& json_text, const std::string& where);
// Reads `path` (a config.json, or a directory holding one).
ModelConfig load_model_config(const std::string& path);

}  // namespace grpo

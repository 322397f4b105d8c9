// ModelConfig parsing: defaults follow transformers, unsupported values are errors naming the key.
#include "config/model_config.h"

#include <gtest/gtest.h>

#include <cmath>

#include "util/error.h"

using grpo::ModelConfig;
using grpo::parse_model_config;

namespace {
void expect_key_error(const std::string& json, const std::string& key) {
  try {
    parse_model_config(json, "cfg.json");
    FAIL() << "no error for " << json;
  } catch (const grpo::Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(key), std::string::npos) << msg;
  }
}
}  // namespace

TEST(ModelConfig, DeepSeekV3OwnConfigStyle) {
  // DeepSeek-V3's own config.json writes rope_scaling and spells out scoring/topk.
  auto c = parse_model_config(R"({
    "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168, "num_hidden_layers": 61,
    "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256, "n_shared_experts": 1,
    "num_experts_per_tok": 8, "moe_intermediate_size": 2048, "first_k_dense_replace": 3,
    "moe_layer_freq": 1, "scoring_func": "sigmoid", "topk_method": "noaux_tc", "n_group": 8,
    "topk_group": 4, "norm_topk_prob": true, "routed_scaling_factor": 2.5, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "max_position_embeddings": 163840, "num_nextn_predict_layers": 1,
    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})", "v3.json");
  EXPECT_EQ(c.qk_head_dim(), 192);
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_EQ(c.yarn->factor, 40);
  EXPECT_EQ(c.topk_method, grpo::TopkMethod::NoauxTc);
  EXPECT_EQ(c.fp8_block_rows, 128);
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  // softmax scale = 192^-0.5 * (0.1 * ln 40 + 1)^2 ; attention factor 1 (mscale == mscale_all_dim)
  double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.softmax_scale(), m * m / std::sqrt(192.0), 1e-12);
  EXPECT_NEAR(c.rope_attention_factor(), 1.0, 1e-12);
}

TEST(ModelConfig, TransformersDefaultsWhenAbsent) {
  auto v3 = parse_model_config(R"({"model_type": "deepseek_v3"})", "x");
  EXPECT_EQ(v3.scoring_func, grpo::ScoringFunc::Sigmoid);
  EXPECT_EQ(v3.topk_method, grpo::TopkMethod::NoauxTc);
  EXPECT_TRUE(v3.norm_topk_prob);
  EXPECT_EQ(v3.routed_scaling_factor, 2.5);
  EXPECT_EQ(v3.q_lora_rank.value(), 1536);
  auto v2 = parse_model_config(R"({"model_type": "deepseek_v2", "q_lora_rank": null, "num_experts_per_tok": 6})", "x");
  EXPECT_EQ(v2.scoring_func, grpo::ScoringFunc::Softmax);
  EXPECT_EQ(v2.topk_method, grpo::TopkMethod::Greedy);
  EXPECT_FALSE(v2.q_lora_rank.has_value());
  EXPECT_FALSE(v2.norm_topk_prob);
}

TEST(ModelConfig, RopeParametersStyle) {
  auto c = parse_model_config(R"({"model_type": "deepseek_v3", "rope_parameters": {"rope_type": "yarn",
      "rope_theta": 50000.0, "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 0.707,
      "mscale_all_dim": 1.0}})", "x");
  EXPECT_EQ(c.rope_theta, 50000.0);
  EXPECT_EQ(c.yarn->original_max_position_embeddings, 64);
  double num = 0.1 * 0.707 * std::log(4.0) + 1.0, den = 0.1 * 1.0 * std::log(4.0) + 1.0;
  EXPECT_NEAR(c.rope_attention_factor(), num / den, 1e-12);
}

TEST(ModelConfig, UnsupportedValuesNameTheKey) {
  expect_key_error(R"({"model_type": "mistral"})", "model_type");
  expect_key_error(R"({"hidden_size": 8})", "model_type");
  expect_key_error(R"({"model_type": "deepseek_v3", "scoring_func": "relu"})", "scoring_func");
  expect_key_error(R"({"model_type": "deepseek_v3", "topk_method": "best"})", "topk_method");
  expect_key_error(R"({"model_type": "deepseek_v3", "hidden_act": "gelu"})", "hidden_act");
  expect_key_error(R"({"model_type": "deepseek_v3", "rope_scaling": {"type": "dynamic", "factor": 2}})", "rope_scaling.rope_type");
  expect_key_error(R"({"model_type": "deepseek_v3", "rope_scaling": {"type": "yarn"}})", "rope_scaling.factor");
  expect_key_error(R"({"model_type": "deepseek_v3", "hidden_size": "big"})", "hidden_size");
  expect_key_error(R"({"model_type": "deepseek_v3", "n_routed_experts": 10, "n_group": 3})", "n_group");
  expect_key_error(R"({"model_type": "deepseek_v3", "n_routed_experts": 8, "num_experts_per_tok": 9})", "num_experts_per_tok");
  expect_key_error(R"({"model_type": "deepseek_v3", "attention_bias": true})", "attention_bias");
  expect_key_error(R"({"model_type": "deepseek_v3", "quantization_config": {"quant_method": "gptq"}})", "quant_method");
  expect_key_error(R"({"model_type": "deepseek_v2", "n_routed_experts": 4})", "num_experts_per_tok");
  expect_key_error("{not json", "not valid JSON");
  expect_key_error(R"({"model_type": "qwen2", "use_sliding_window": true})", "use_sliding_window");
  expect_key_error(R"({"model_type": "qwen2", "layer_types": ["sliding_attention"]})", "layer_types");
  expect_key_error(R"({"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 4})", "num_key_value_heads");
  expect_key_error(R"({"model_type": "llama", "rope_parameters": {"rope_type": "llama3", "factor": 8}})", "low_freq_factor");
  expect_key_error(R"({"model_type": "llama", "mlp_bias": true})", "mlp_bias");
  expect_key_error(R"({"model_type": "qwen3", "partial_rotary_factor": 0.5})", "partial_rotary_factor");
  expect_key_error(R"({"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 5})", "num_experts_per_tok");
}

TEST(ModelConfig, LlamaFamilyDefaultsAndRules) {
  // Qwen2: q/k/v biases whatever attention_bias says, o_proj none; head_dim null = hidden / heads.
  auto q2 = parse_model_config(R"({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 2, "head_dim": null, "attention_bias": null, "use_sliding_window": false,
      "sliding_window": 4096, "tie_word_embeddings": true})", "q2");
  EXPECT_FALSE(q2.mla());
  EXPECT_TRUE(q2.qkv_bias);
  EXPECT_FALSE(q2.o_bias);
  EXPECT_FALSE(q2.qk_norm);
  EXPECT_EQ(q2.head_dim, 16);
  EXPECT_EQ(q2.kv_cache_width(), 2 * 2 * 16);
  EXPECT_EQ(q2.vocab_size, 151936);
  EXPECT_EQ(q2.architecture(), "Qwen2ForCausalLM");
  // Llama: attention_bias on all four projections; num_key_value_heads defaults to the heads.
  auto ll = parse_model_config(R"({"model_type": "llama", "attention_bias": true, "rope_parameters":
      {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
       "original_max_position_embeddings": 8192, "rope_theta": 500000}})", "ll");
  EXPECT_TRUE(ll.qkv_bias && ll.o_bias);
  EXPECT_EQ(ll.num_key_value_heads, 32);
  ASSERT_TRUE(ll.llama3.has_value());
  EXPECT_EQ(ll.rope_theta, 500000);
  EXPECT_EQ(ll.vocab_size, 32000);
  // Qwen3: q/k norms, head_dim 128 by default.
  auto q3 = parse_model_config(R"({"model_type": "qwen3", "hidden_size": 64})", "q3");
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_EQ(q3.head_dim, 128);
  EXPECT_EQ(q3.rope_dim(), 128);
  EXPECT_DOUBLE_EQ(q3.softmax_scale(), 1 / std::sqrt(128.0));
  // Qwen3-MoE: transformers 5 writes num_local_experts; MoE on layers (i + 1) % step == 0 outside
  // mlp_only_layers, softmax greedy top-k, no shared experts.
  auto qm = parse_model_config(R"({"model_type": "qwen3_moe", "num_hidden_layers": 6, "num_local_experts": 8,
      "num_experts_per_tok": 2, "decoder_sparse_step": 2, "mlp_only_layers": [3], "norm_topk_prob": true})", "qm");
  EXPECT_EQ(qm.n_routed_experts, 8);
  EXPECT_EQ(qm.n_shared_experts, 0);
  EXPECT_TRUE(qm.norm_topk_prob);
  EXPECT_EQ(qm.num_key_value_heads, 4);
  std::vector<bool> moe;
  for (int64_t l = 0; l < 6; ++l) moe.push_back(qm.is_moe_layer(l));
  EXPECT_EQ(moe, (std::vector<bool>{false, true, false, false, false, true}));
  auto qn = parse_model_config(R"({"model_type": "qwen3_moe", "num_experts": 16})", "qn");
  EXPECT_EQ(qn.n_routed_experts, 16);
  EXPECT_EQ(qn.num_experts_per_tok, 8);
  EXPECT_FALSE(qn.norm_topk_prob);
}

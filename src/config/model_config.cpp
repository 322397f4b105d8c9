#include "config/model_config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo {

using json = nlohmann::json;

namespace {

// Reads typed fields of one JSON object; every error names the file and the key.
class Fields {
 public:
  Fields(const json& obj, std::string where, std::string prefix = "")
      : obj_(obj), where_(std::move(where)), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw Error(where_ + ": key '" + prefix_ + key + "': " + what);
  }
  bool has(const std::string& key) const { return obj_.contains(key) && !obj_[key].is_null(); }

  int64_t integer(const std::string& key, std::optional<int64_t> dflt = std::nullopt) const {
    if (!has(key)) {
      if (dflt) return *dflt;
      fail(key, "missing (required)");
    }
    const json& v = obj_[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) return (int64_t)v.get<double>();
    fail(key, "expected an integer, got " + v.dump());
  }
  int64_t positive(const std::string& key, std::optional<int64_t> dflt = std::nullopt) const {
    int64_t v = integer(key, dflt);
    if (v <= 0) fail(key, "must be positive, got " + std::to_string(v));
    return v;
  }
  std::optional<int64_t> optional_int(const std::string& key) const {
    if (!has(key)) return std::nullopt;
    return integer(key);
  }
  double number(const std::string& key, std::optional<double> dflt = std::nullopt) const {
    if (!has(key)) {
      if (dflt) return *dflt;
      fail(key, "missing (required)");
    }
    const json& v = obj_[key];
    if (!v.is_number()) fail(key, "expected a number, got " + v.dump());
    return v.get<double>();
  }
  bool boolean(const std::string& key, bool dflt) const {
    if (!has(key)) return dflt;
    const json& v = obj_[key];
    if (!v.is_boolean()) fail(key, "expected true or false, got " + v.dump());
    return v.get<bool>();
  }
  std::string string(const std::string& key, const std::string& dflt) const {
    if (!has(key)) return dflt;
    const json& v = obj_[key];
    if (!v.is_string()) fail(key, "expected a string, got " + v.dump());
    return v.get<std::string>();
  }

 private:
  const json& obj_;
  std::string where_;
  std::string prefix_;
};

// eos_token_id may be a list in the wild; the first entry is the model's end of sequence.
std::optional<int64_t> token_id(const Fields& f, const json& obj, const std::string& key) {
  if (!f.has(key)) return std::nullopt;
  const json& v = obj[key];
  if (v.is_array()) {
    if (v.empty()) return std::nullopt;
    if (!v[0].is_number_integer()) f.fail(key, "expected integer token ids");
    return v[0].get<int64_t>();
  }
  return f.integer(key);
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

}  // namespace

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (n_routed_experts <= 0) return false;
  if (decoder_sparse_step > 0)
    return (layer + 1) % decoder_sparse_step == 0 &&
           std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) == mlp_only_layers.end();
  return layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
}

double ModelConfig::softmax_scale() const {
  if (!mla()) return 1.0 / std::sqrt(static_cast<double>(head_dim));
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (yarn && yarn->mscale_all_dim != 0.0) {
    double m = yarn_get_mscale(yarn->factor, yarn->mscale_all_dim);
    scale = scale * m * m;
  }
  return scale;
}

double ModelConfig::rope_attention_factor() const {
  if (!yarn) return 1.0;
  if (yarn->attention_factor) return *yarn->attention_factor;
  if (yarn->mscale != 0.0 && yarn->mscale_all_dim != 0.0)
    return yarn_get_mscale(yarn->factor, yarn->mscale) / yarn_get_mscale(yarn->factor, yarn->mscale_all_dim);
  return yarn_get_mscale(yarn->factor, 1.0);
}

std::string ModelConfig::architecture() const {
  if (model_type == "deepseek_v3") return "DeepseekV3ForCausalLM";
  if (model_type == "deepseek_v2") return "DeepseekV2ForCausalLM";
  if (model_type == "qwen2") return "Qwen2ForCausalLM";
  if (model_type == "llama") return "LlamaForCausalLM";
  if (model_type == "qwen3") return "Qwen3ForCausalLM";
  return "Qwen3MoeForCausalLM";
}

namespace {

// transformers' config-class defaults per model type, so that a config.json that omits a field
// means what it means to transformers.
struct Defaults {
  int64_t vocab, hidden, intermediate, layers, heads, max_positions;
};

Defaults defaults_for(const std::string& type) {
  if (type == "deepseek_v3") return {129280, 7168, 18432, 61, 128, 4096};
  if (type == "deepseek_v2") return {102400, 4096, 11008, 32, 32, 2048};
  if (type == "qwen2" || type == "qwen3") return {151936, 4096, 22016, 32, 32, 32768};
  if (type == "llama") return {32000, 4096, 11008, 32, 32, 2048};
  return {151936, 2048, 6144, 24, 32, 32768};  // qwen3_moe
}

void parse_rope(const json& obj, const Fields& f, const std::string& where, ModelConfig& c) {
  // DeepSeek's checkpoints write rope_scaling; transformers 5.x writes rope_parameters.
  const char* rope_key = f.has("rope_parameters") ? "rope_parameters" : (f.has("rope_scaling") ? "rope_scaling" : nullptr);
  c.rope_theta = f.number("rope_theta", 10000.0);
  if (f.has("partial_rotary_factor") && f.number("partial_rotary_factor") != 1.0)
    f.fail("partial_rotary_factor", "only 1 (RoPE over the whole head) is supported");
  if (rope_key) {
    const json& r = obj[rope_key];
    if (!r.is_object()) f.fail(rope_key, "expected an object");
    Fields rf(r, where, std::string(rope_key) + ".");
    c.rope_theta = rf.number("rope_theta", c.rope_theta);
    if (rf.has("partial_rotary_factor") && rf.number("partial_rotary_factor") != 1.0)
      rf.fail("partial_rotary_factor", "only 1 (RoPE over the whole head) is supported");
    std::string type = rf.string("rope_type", rf.string("type", "default"));
    if (type == "yarn") {
      YarnScaling y;
      y.factor = rf.number("factor");
      if (!(y.factor >= 1.0)) rf.fail("factor", "must be >= 1");
      y.original_max_position_embeddings =
          rf.positive("original_max_position_embeddings", c.max_position_embeddings);
      // transformers treats 0/null beta as the default (`x or default`).
      y.beta_fast = rf.number("beta_fast", 32.0);
      if (y.beta_fast == 0) y.beta_fast = 32.0;
      y.beta_slow = rf.number("beta_slow", 1.0);
      if (y.beta_slow == 0) y.beta_slow = 1.0;
      y.mscale = rf.number("mscale", 0.0);
      y.mscale_all_dim = rf.number("mscale_all_dim", 0.0);
      if (rf.has("attention_factor")) y.attention_factor = rf.number("attention_factor");
      y.truncate = rf.boolean("truncate", true);
      c.yarn = y;
    } else if (type == "llama3") {
      Llama3Scaling l;
      l.factor = rf.number("factor");
      if (!(l.factor >= 1.0)) rf.fail("factor", "must be >= 1");
      l.low_freq_factor = rf.number("low_freq_factor");
      l.high_freq_factor = rf.number("high_freq_factor");
      if (!(l.high_freq_factor > l.low_freq_factor)) rf.fail("high_freq_factor", "must exceed low_freq_factor");
      l.original_max_position_embeddings = rf.positive("original_max_position_embeddings");
      c.llama3 = l;
    } else if (type == "linear") {
      c.rope_linear_factor = rf.number("factor");
      if (!(c.rope_linear_factor > 0)) rf.fail("factor", "must be positive");
    } else if (type != "default") {
      rf.fail("rope_type", "unsupported RoPE type '" + type + "' (supported: default, linear, llama3, yarn)");
    }
  }
  if (!(c.rope_theta > 0)) f.fail("rope_theta", "must be positive");
}

// DeepSeek: multi-head latent attention and DeepSeekMoE.
void parse_deepseek(const json& obj, const Fields& f, ModelConfig& c) {
  const bool v3 = c.model_type == "deepseek_v3";
  if (f.has("q_lora_rank")) c.q_lora_rank = f.positive("q_lora_rank");
  else if (!obj.contains("q_lora_rank")) c.q_lora_rank = 1536;  // absent: the class default; null: plain q_proj
  c.kv_lora_rank = f.positive("kv_lora_rank", 512);
  c.qk_nope_head_dim = f.positive("qk_nope_head_dim", 128);
  c.qk_rope_head_dim = f.positive("qk_rope_head_dim", 64);
  if (c.qk_rope_head_dim % 2 != 0) f.fail("qk_rope_head_dim", "must be even");
  c.v_head_dim = f.positive("v_head_dim", 128);
  if (f.boolean("attention_bias", false)) f.fail("attention_bias", "true is not supported (DeepSeek models have none)");
  c.rope_interleave = f.boolean("rope_interleave", true);
  if (f.has("sliding_window")) f.fail("sliding_window", "sliding-window attention is not supported");

  // MoE. n_routed_experts null or 0 makes a dense model.
  c.n_routed_experts = f.has("n_routed_experts") ? f.integer("n_routed_experts") : (obj.contains("n_routed_experts") ? 0 : (v3 ? 256 : 64));
  if (c.n_routed_experts < 0) f.fail("n_routed_experts", "must be >= 0");
  c.first_k_dense_replace = f.integer("first_k_dense_replace", v3 ? 3 : 0);
  if (c.first_k_dense_replace < 0) f.fail("first_k_dense_replace", "must be >= 0");
  c.moe_layer_freq = f.positive("moe_layer_freq", 1);
  c.n_shared_experts = f.integer("n_shared_experts", v3 ? 1 : 2);
  if (c.n_shared_experts < 0) f.fail("n_shared_experts", "must be >= 0");
  c.moe_intermediate_size = f.positive("moe_intermediate_size", v3 ? 2048 : 1407);
  c.norm_topk_prob = f.boolean("norm_topk_prob", v3);
  c.routed_scaling_factor = f.number("routed_scaling_factor", v3 ? 2.5 : 1.0);
  std::string scoring = f.string("scoring_func", v3 ? "sigmoid" : "softmax");
  if (scoring == "softmax") c.scoring_func = ScoringFunc::Softmax;
  else if (scoring == "sigmoid") c.scoring_func = ScoringFunc::Sigmoid;
  else f.fail("scoring_func", "unsupported '" + scoring + "' (supported: softmax, sigmoid)");
  std::string topk = f.string("topk_method", v3 ? "noaux_tc" : "greedy");
  if (topk == "greedy") c.topk_method = TopkMethod::Greedy;
  else if (topk == "group_limited_greedy") c.topk_method = TopkMethod::GroupLimitedGreedy;
  else if (topk == "noaux_tc") c.topk_method = TopkMethod::NoauxTc;
  else f.fail("topk_method", "unsupported '" + topk + "' (supported: greedy, group_limited_greedy, noaux_tc)");
  if (c.n_routed_experts > 0) {
    c.num_experts_per_tok = f.positive("num_experts_per_tok", v3 ? std::optional<int64_t>(8) : std::nullopt);
    if (c.num_experts_per_tok > c.n_routed_experts)
      f.fail("num_experts_per_tok", "exceeds n_routed_experts (" + std::to_string(c.n_routed_experts) + ")");
    c.n_group = f.positive("n_group", v3 ? 8 : 1);
    c.topk_group = f.positive("topk_group", v3 ? 4 : 1);
    if (c.n_routed_experts % c.n_group != 0)
      f.fail("n_group", "must divide n_routed_experts (" + std::to_string(c.n_routed_experts) + ")");
    if (c.topk_group > c.n_group) f.fail("topk_group", "exceeds n_group");
    if (c.topk_method == TopkMethod::NoauxTc && c.n_group > 1 && c.n_routed_experts / c.n_group < 2)
      f.fail("n_group", "noaux_tc scores a group by its top-2 experts, so each group needs at least 2");
    if (c.topk_method != TopkMethod::Greedy && c.topk_group * (c.n_routed_experts / c.n_group) < c.num_experts_per_tok)
      f.fail("topk_group", "the selected groups hold fewer experts than num_experts_per_tok");
  }
  c.num_nextn_predict_layers = f.integer("num_nextn_predict_layers", 0);
  if (c.num_nextn_predict_layers < 0) f.fail("num_nextn_predict_layers", "must be >= 0");
}

// Llama 3, Qwen2/2.5, Qwen3 and Qwen3-MoE: grouped-query attention with RoPE over whole heads
// (rotate-half layout), SwiGLU MLPs, and for Qwen3-MoE softmax top-k routed experts.
void parse_gqa(const json& obj, const Fields& f, ModelConfig& c) {
  const std::string& t = c.model_type;
  c.num_key_value_heads = f.positive("num_key_value_heads", t == "qwen3_moe" ? 4 : c.num_attention_heads);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    f.fail("num_key_value_heads", "must divide num_attention_heads (" + std::to_string(c.num_attention_heads) + ")");
  c.head_dim = f.positive("head_dim", t == "qwen3" ? 128 : c.hidden_size / c.num_attention_heads);
  if (c.head_dim % 2 != 0) f.fail("head_dim", "must be even");
  const bool attention_bias = f.boolean("attention_bias", false);
  c.qkv_bias = t == "qwen2" ? true : attention_bias;  // Qwen2's q/k/v always carry a bias, its o_proj never
  c.o_bias = t == "qwen2" ? false : attention_bias;
  c.qk_norm = t == "qwen3" || t == "qwen3_moe";
  c.rope_interleave = false;
  if (f.boolean("use_sliding_window", false)) f.fail("use_sliding_window", "sliding-window attention is not supported");
  if (f.has("layer_types")) {
    const json& lt = obj["layer_types"];
    if (!lt.is_array()) f.fail("layer_types", "expected a list");
    for (const auto& v : lt)
      if (!v.is_string() || v.get<std::string>() != "full_attention")
        f.fail("layer_types", "only full_attention layers are supported, got " + v.dump());
  }
  if (t != "qwen3_moe") return;
  // Qwen's configs say num_experts; transformers 5 writes it as num_local_experts.
  const char* experts_key = f.has("num_local_experts") ? "num_local_experts" : "num_experts";
  c.n_routed_experts = f.integer(experts_key, 128);
  if (c.n_routed_experts < 0) f.fail(experts_key, "must be >= 0");
  c.moe_intermediate_size = f.positive("moe_intermediate_size", 768);
  c.norm_topk_prob = f.boolean("norm_topk_prob", false);
  c.decoder_sparse_step = f.positive("decoder_sparse_step", 1);
  if (f.has("mlp_only_layers")) {
    const json& m = obj["mlp_only_layers"];
    if (!m.is_array()) f.fail("mlp_only_layers", "expected a list of layer indices");
    for (const auto& v : m) {
      if (!v.is_number_integer()) f.fail("mlp_only_layers", "expected integer layer indices, got " + v.dump());
      c.mlp_only_layers.push_back(v.get<int64_t>());
    }
  }
  c.scoring_func = ScoringFunc::Softmax;
  c.topk_method = TopkMethod::Greedy;
  if (c.n_routed_experts > 0) {
    c.num_experts_per_tok = f.positive("num_experts_per_tok", 8);
    if (c.num_experts_per_tok > c.n_routed_experts)
      f.fail("num_experts_per_tok", std::string("exceeds ") + experts_key + " (" + std::to_string(c.n_routed_experts) + ")");
  }
}

}  // namespace

ModelConfig parse_model_config(const std::string& json_text, const std::string& where) {
  json obj = parse_json(json_text, where);
  if (!obj.is_object()) throw Error(where + ": expected a JSON object");
  Fields f(obj, where);
  ModelConfig c;
  static const char* kSupported = "deepseek_v2, deepseek_v3, qwen2, llama, qwen3, qwen3_moe";
  if (!f.has("model_type")) f.fail("model_type", std::string("missing (required: one of ") + kSupported + ")");
  c.model_type = f.string("model_type", "");
  const std::string& t = c.model_type;
  if (t != "deepseek_v2" && t != "deepseek_v3" && t != "qwen2" && t != "llama" && t != "qwen3" && t != "qwen3_moe")
    f.fail("model_type", "unsupported model_type '" + t + "' (supported: " + kSupported + ")");

  const Defaults d = defaults_for(t);
  c.vocab_size = f.positive("vocab_size", d.vocab);
  c.hidden_size = f.positive("hidden_size", d.hidden);
  c.intermediate_size = f.positive("intermediate_size", d.intermediate);
  c.num_hidden_layers = f.positive("num_hidden_layers", d.layers);
  c.num_attention_heads = f.positive("num_attention_heads", d.heads);
  c.max_position_embeddings = f.positive("max_position_embeddings", d.max_positions);
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) f.fail("rms_norm_eps", "must be positive");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.initializer_range = f.number("initializer_range", 0.02);
  if (f.string("hidden_act", "silu") != "silu") f.fail("hidden_act", "only silu is supported");
  if (f.boolean("mlp_bias", false)) f.fail("mlp_bias", "true is not supported");
  if (f.integer("pretraining_tp", 1) != 1) f.fail("pretraining_tp", "only 1 is supported");

  if (c.mla()) parse_deepseek(obj, f, c);
  else parse_gqa(obj, f, c);
  parse_rope(obj, f, where, c);

  if (f.has("quantization_config")) {
    const json& q = obj["quantization_config"];
    Fields qf(q, where, "quantization_config.");
    std::string method = qf.string("quant_method", "");
    if (method != "fp8") qf.fail("quant_method", "unsupported '" + method + "' (supported: fp8 with block scales)");
    if (!qf.has("weight_block_size") || !q["weight_block_size"].is_array() || q["weight_block_size"].size() != 2)
      qf.fail("weight_block_size", "expected [rows, cols]");
    c.fp8_block_rows = q["weight_block_size"][0].get<int64_t>();
    c.fp8_block_cols = q["weight_block_size"][1].get<int64_t>();
    if (c.fp8_block_rows <= 0 || c.fp8_block_cols <= 0) qf.fail("weight_block_size", "must be positive");
  }
  c.bos_token_id = token_id(f, obj, "bos_token_id");
  c.eos_token_id = token_id(f, obj, "eos_token_id");
  c.pad_token_id = token_id(f, obj, "pad_token_id");
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::string file = is_directory(path) ? path + "/config.json" : path;
  return parse_model_config(read_file(file), file);
}

}  // namespace grpo

#include "config/model_config.h"

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

double ModelConfig::softmax_scale() const {
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

ModelConfig parse_model_config(const std::string& json_text, const std::string& where) {
  json obj = parse_json(json_text, where);
  if (!obj.is_object()) throw Error(where + ": expected a JSON object");
  Fields f(obj, where);
  ModelConfig c;
  if (!f.has("model_type")) f.fail("model_type", "missing (required: deepseek_v2 or deepseek_v3)");
  c.model_type = f.string("model_type", "");
  const bool v3 = c.model_type == "deepseek_v3";
  if (!v3 && c.model_type != "deepseek_v2")
    f.fail("model_type", "unsupported model_type '" + c.model_type + "' (supported: deepseek_v2, deepseek_v3)");

  // Defaults are transformers' DeepseekV2Config / DeepseekV3Config defaults, so a config.json
  // that omits a field means what it means to transformers.
  c.vocab_size = f.positive("vocab_size", v3 ? 129280 : 102400);
  c.hidden_size = f.positive("hidden_size", v3 ? 7168 : 4096);
  c.intermediate_size = f.positive("intermediate_size", v3 ? 18432 : 11008);
  c.num_hidden_layers = f.positive("num_hidden_layers", v3 ? 61 : 32);
  c.num_attention_heads = f.positive("num_attention_heads", v3 ? 128 : 32);
  c.max_position_embeddings = f.positive("max_position_embeddings", v3 ? 4096 : 2048);
  c.rms_norm_eps = f.number("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) f.fail("rms_norm_eps", "must be positive");
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.initializer_range = f.number("initializer_range", 0.02);

  if (f.has("q_lora_rank")) c.q_lora_rank = f.positive("q_lora_rank");
  else if (!obj.contains("q_lora_rank")) c.q_lora_rank = 1536;  // absent: the class default; null: plain q_proj
  c.kv_lora_rank = f.positive("kv_lora_rank", 512);
  c.qk_nope_head_dim = f.positive("qk_nope_head_dim", 128);
  c.qk_rope_head_dim = f.positive("qk_rope_head_dim", 64);
  if (c.qk_rope_head_dim % 2 != 0) f.fail("qk_rope_head_dim", "must be even");
  c.v_head_dim = f.positive("v_head_dim", 128);

  if (f.string("hidden_act", "silu") != "silu") f.fail("hidden_act", "only silu is supported");
  if (f.boolean("attention_bias", false)) f.fail("attention_bias", "true is not supported (DeepSeek models have none)");
  if (f.boolean("mlp_bias", false)) f.fail("mlp_bias", "true is not supported (DeepSeek models have none)");
  if (f.integer("pretraining_tp", 1) != 1) f.fail("pretraining_tp", "only 1 is supported");
  c.rope_interleave = f.boolean("rope_interleave", true);
  if (f.has("sliding_window")) f.fail("sliding_window", "sliding-window attention is not supported");

  // RoPE: DeepSeek's checkpoints write rope_scaling; transformers 5.x writes rope_parameters.
  const char* rope_key = f.has("rope_parameters") ? "rope_parameters" : (f.has("rope_scaling") ? "rope_scaling" : nullptr);
  c.rope_theta = f.number("rope_theta", 10000.0);
  if (rope_key) {
    const json& r = obj[rope_key];
    if (!r.is_object()) f.fail(rope_key, "expected an object");
    Fields rf(r, where, std::string(rope_key) + ".");
    c.rope_theta = rf.number("rope_theta", c.rope_theta);
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
    } else if (type != "default") {
      rf.fail("rope_type", "unsupported RoPE type '" + type + "' (supported: default, yarn)");
    }
  }
  if (!(c.rope_theta > 0)) f.fail("rope_theta", "must be positive");

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

#include "model/lora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "io/safetensors.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::model {

using json = nlohmann::json;

namespace {

const char* kPrefix = "base_model.model.";

// The decoder's linear layers by name, without lm_head and the MTP layers (not in transformers' model).
std::vector<std::pair<std::string, LinearImpl*>> decoder_linears(CausalLM& model) {
  std::vector<std::pair<std::string, LinearImpl*>> out;
  const int64_t L = model.config().num_hidden_layers;
  for (auto& kv : model.named_modules("", /*include_self=*/false)) {
    auto* lin = dynamic_cast<LinearImpl*>(kv.value().get());
    if (!lin) continue;
    const std::string& name = kv.key();
    if (name == "lm_head") continue;
    static const std::string layers = "model.layers.";
    if (name.rfind(layers, 0) == 0 && std::stoll(name.substr(layers.size())) >= L) continue;
    out.emplace_back(name, lin);
  }
  return out;
}

bool matches(const std::string& name, const std::string& target) {
  return name == target || (name.size() > target.size() && name.compare(name.size() - target.size(), target.size(), target) == 0 &&
                            name[name.size() - target.size() - 1] == '.');
}

std::string last_component(const std::string& name) { return name.substr(name.rfind('.') + 1); }

// PEFT on transformers 5 maps the MLP names to the fused routed-expert weights (gate_proj and
// up_proj to gate_up_proj, down_proj to down_proj) in a model with routed experts, whose dense and
// shared-expert MLPs then get no adapter; in a dense model they name the MLP's linear layers.
bool is_mlp_name(const std::string& leaf) { return leaf == "gate_proj" || leaf == "up_proj" || leaf == "down_proj"; }

std::vector<std::pair<std::string, RoutedExpertsImpl*>> routed_experts(CausalLM& model) {
  std::vector<std::pair<std::string, RoutedExpertsImpl*>> out;
  const int64_t L = model.config().num_hidden_layers;
  for (int64_t l = 0; l < L; ++l) {
    auto layer = model.model->layers->ptr<DecoderLayerImpl>(l);
    if (layer->moe) out.emplace_back("model.layers." + std::to_string(l) + ".mlp.experts", layer->moe->experts.get());
  }
  return out;
}

double scaling(double alpha, int64_t r, bool rslora) { return rslora ? alpha / std::sqrt((double)r) : alpha / r; }

// PEFT's names of an experts module's adapters: with both weights adapted the gate_up adapter is the
// inner wrapper (`experts.base_layer.lora_A`), the down adapter the outer (`experts.lora_A`).
std::string expert_prefix(const std::string& name, const RoutedExpertsImpl& ex, bool gate_up) {
  const bool both = ex.gate_up_lora_A.defined() && ex.down_lora_A.defined();
  return kPrefix + name + (both && gate_up ? ".base_layer" : "");
}

}  // namespace

double LoraConfig::scaling() const { return model::scaling(alpha, r, use_rslora); }

std::vector<std::string> add_lora(CausalLM& model, const LoraConfig& c, uint64_t seed) {
  if (c.r <= 0) throw Error("lora_r must be positive to add adapters (got " + std::to_string(c.r) + ")");
  if (c.target_modules.empty()) throw Error("lora_target_modules is empty: name the layers to adapt, or all-linear");
  auto layers = decoder_linears(model);
  auto experts = routed_experts(model);
  const bool all = c.target_modules.size() == 1 && c.target_modules[0] == "all-linear";
  std::set<std::string> used;
  bool gate = all, up = all, down = all;
  for (const auto& t : c.target_modules) {
    const std::string leaf = last_component(t);
    gate |= leaf == "gate_proj";
    up |= leaf == "up_proj";
    down |= leaf == "down_proj";
    if (is_mlp_name(leaf) && !experts.empty()) used.insert(t);
  }
  if (!experts.empty() && gate != up)
    throw Error("lora_target_modules: gate_proj and up_proj are one fused weight of the routed experts (gate_up_proj): "
                "target both or neither");
  std::vector<std::pair<std::string, LinearImpl*>> chosen;
  for (auto& [name, lin] : layers) {
    if (!experts.empty() && is_mlp_name(last_component(name))) continue;  // see is_mlp_name
    bool hit = all;
    for (const auto& t : c.target_modules)
      if (!all && matches(name, t)) {
        hit = true;
        used.insert(t);
      }
    if (hit) chosen.emplace_back(name, lin);
  }
  if (!all)
    for (const auto& t : c.target_modules)
      if (!used.count(t)) {
        std::set<std::string> kinds;
        for (auto& [name, lin] : layers) kinds.insert(last_component(name));
        if (!experts.empty()) kinds.insert({"gate_proj", "up_proj", "down_proj"});
        std::string list;
        for (const auto& k : kinds) list += (list.empty() ? "" : ", ") + k;
        throw Error("lora_target_modules: '" + t + "' matches no layer of this model (its layers: " + list +
                    "; or all-linear)");
      }
  if ((gate || down) && !experts.empty() && c.dropout > 0)
    throw Error("lora_dropout must be 0 with adapters on the routed experts (as in PEFT: dropout cannot act on a "
                "merged expert weight)");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<std::string> names;
  for (auto& [name, lin] : chosen) {
    if (lin->has_lora()) throw Error("add_lora: layer '" + name + "' already has an adapter");
    lin->add_lora(c.r, c.scaling(), c.dropout, gen);
    names.push_back(name);
  }
  if (gate || down)
    for (auto& [name, ex] : experts) {
      // The fused gate_up weight gets rank 2r and alpha 2 * lora_alpha, as PEFT's conversion sets.
      ex->add_lora(gate ? 2 * c.r : 0, scaling(2 * c.alpha, 2 * c.r, c.use_rslora), down ? c.r : 0,
                   scaling(c.alpha, c.r, c.use_rslora), gen);
      names.push_back(name);
    }
  return names;
}

bool has_lora(CausalLM& model) { return !lora_parameters(model).empty(); }

std::vector<std::pair<std::string, Tensor>> lora_parameters(CausalLM& model) {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto& [name, lin] : decoder_linears(model))
    if (lin->has_lora()) {
      out.emplace_back(name + ".lora_A.weight", lin->lora_A->weight);
      out.emplace_back(name + ".lora_B.weight", lin->lora_B->weight);
    }
  for (auto& [name, ex] : routed_experts(model))
    for (auto [suffix, t] : {std::pair<const char*, Tensor>{".gate_up_lora_A", ex->gate_up_lora_A},
                             {".gate_up_lora_B", ex->gate_up_lora_B},
                             {".down_lora_A", ex->down_lora_A},
                             {".down_lora_B", ex->down_lora_B}})
      if (t.defined()) out.emplace_back(name + suffix, t);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void set_adapters_enabled(CausalLM& model, bool enabled) {
  for (auto& [name, lin] : decoder_linears(model)) lin->lora_enabled = enabled;
  for (auto& [name, ex] : routed_experts(model)) ex->lora_enabled = enabled;
}

bool is_adapter_dir(const std::string& dir) {
  return std::filesystem::exists(dir + "/adapter_config.json") && !std::filesystem::exists(dir + "/config.json");
}

LoraConfig read_adapter_config(const std::string& dir, std::string* base_model) {
  const std::string path = dir + "/adapter_config.json";
  json j = parse_json(read_file(path), path);
  auto fail = [&](const std::string& what) { throw Error(path + ": " + what); };
  if (!j.is_object()) fail("not a JSON object");
  if (j.value("peft_type", std::string("LORA")) != "LORA") fail("peft_type '" + j["peft_type"].dump() + "' is not LORA");
  LoraConfig c;
  if (!j.contains("r") || !j["r"].is_number_integer() || j["r"].get<int64_t>() <= 0) fail("'r' must be a positive integer");
  c.r = j["r"].get<int64_t>();
  auto number = [&](const char* k, double dflt) {
    if (!j.contains(k) || j[k].is_null()) return dflt;
    if (!j[k].is_number()) fail(std::string("'") + k + "' must be a number");
    return j[k].get<double>();
  };
  c.alpha = number("lora_alpha", 8.0);
  c.dropout = number("lora_dropout", 0.0);
  c.use_rslora = j.value("use_rslora", false);
  c.target_modules.clear();
  const json& t = j.contains("target_modules") ? j["target_modules"] : json();
  if (t.is_string()) {
    if (t != "all-linear") fail("'target_modules' as a regular expression is not supported; list the module names");
    c.target_modules = {"all-linear"};
  } else if (t.is_array()) {
    for (const auto& x : t) {
      if (!x.is_string()) fail("'target_modules' must list module names");
      c.target_modules.push_back(x.get<std::string>());
    }
  } else if (!t.is_null()) {
    fail("'target_modules' must be a list of module names");
  }
  // Adapters on the fused expert weights, back to the MLP names they came from.
  bool fused_gate_up = false;
  if (j.contains("target_parameters") && j["target_parameters"].is_array())
    for (const auto& x : j["target_parameters"]) {
      const std::string leaf = x.is_string() ? last_component(x.get<std::string>()) : "";
      if (leaf == "gate_up_proj") {
        c.target_modules.insert(c.target_modules.end(), {"gate_proj", "up_proj"});
        fused_gate_up = true;
      } else if (leaf == "down_proj") {
        c.target_modules.push_back("down_proj");
      } else {
        fail("'target_parameters' entry " + x.dump() + " is not supported (only the experts' gate_up_proj and down_proj)");
      }
    }
  if (c.target_modules.empty()) fail("names no target (target_modules and target_parameters are empty)");
  // The only patterns grpo honours: the ones PEFT sets for the fused gate_up weight (rank 2r, alpha 2 alpha).
  for (const char* k : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(k) || j[k].is_null() || j[k].empty()) continue;
    const double want = std::string(k) == "rank_pattern" ? 2.0 * c.r : 2.0 * c.alpha;
    const json& p = j[k];
    const bool ok = fused_gate_up && p.is_object() && p.size() == 1 && p.begin().key() == ".*\\.gate_up_proj" &&
                    p.begin().value().is_number() && p.begin().value().get<double>() == want;
    if (!ok) fail(std::string("'") + k + "' " + p.dump() + " is not supported (only PEFT's own setting for the fused gate_up_proj)");
  }
  for (const char* k : {"use_dora", "fan_in_fan_out", "lora_bias"})
    if (j.value(k, false)) fail(std::string("'") + k + "': true is not supported");
  if (j.contains("bias") && j["bias"] != "none") fail("'bias' other than \"none\" is not supported");
  for (const char* k : {"modules_to_save", "layers_to_transform", "trainable_token_indices"})
    if (j.contains(k) && !j[k].is_null() && !j[k].empty()) fail(std::string("'") + k + "' is not supported");
  if (base_model) *base_model = j.value("base_model_name_or_path", std::string());
  return c;
}

std::string resolve_adapter_base(const std::string& adapter_dir, const std::string& base) {
  namespace fs = std::filesystem;
  const std::string where = adapter_dir + "/adapter_config.json";
  if (base.empty()) throw Error(where + ": no base_model_name_or_path to load the base from");
  std::vector<std::string> tries;
  if (fs::path(base).is_relative()) tries.push_back((fs::path(adapter_dir) / base).lexically_normal().string());
  tries.push_back(base);
  for (const auto& d : tries)
    if (fs::exists(d + "/config.json")) return d;
  throw Error(where + ": its base model '" + base + "' is not a local model directory (no config.json there" +
              (fs::path(base).is_relative() ? " nor beside the adapter" : "") + ")");
}

std::shared_ptr<CausalLM> merged_copy(CausalLM& model) {
  at::NoGradGuard no_grad;
  auto out = std::make_shared<CausalLM>(model.config());
  std::map<std::string, Tensor> effective;
  for (auto& [name, lin] : decoder_linears(model)) effective[name + ".weight"] = lin->effective_weight();
  for (auto& [name, ex] : routed_experts(model)) {
    effective[name + ".gate_up_proj"] = ex->effective_gate_up();
    effective[name + ".down_proj"] = ex->effective_down();
  }
  auto src = model.named_parameters(true);
  out->to_device_dtype(model.device(), model.dtype());
  for (auto& kv : out->named_parameters(true)) {
    auto it = effective.find(kv.key());
    kv.value().copy_(it != effective.end() ? it->second : src[kv.key()]);
  }
  auto bufs = model.named_buffers(true);
  for (auto& kv : out->named_buffers(true)) kv.value().copy_(bufs[kv.key()]);
  return out;
}

void save_adapter(CausalLM& model, const LoraConfig& c, const std::string& base_model, const std::string& dir) {
  make_directories(dir);
  std::vector<std::pair<std::string, Tensor>> cpu;
  std::set<std::string> kinds;
  auto put = [&](const std::string& name, const Tensor& t) {
    cpu.emplace_back(name, t.detach().to(at::kCPU).to(at::kFloat).contiguous());
  };
  for (auto& [name, lin] : decoder_linears(model))
    if (lin->has_lora()) {
      put(kPrefix + name + ".lora_A.weight", lin->lora_A->weight);
      put(kPrefix + name + ".lora_B.weight", lin->lora_B->weight);
      kinds.insert(last_component(name));
    }
  // Experts in PEFT's ParamWrapper layout: lora_A (E*r, in) expert-major; lora_B (out, r*E) with
  // column k*E + e holding expert e's column k.
  std::vector<std::string> params;
  for (auto& [name, ex] : routed_experts(model))
    for (bool gu : {true, false}) {
      const Tensor& a = gu ? ex->gate_up_lora_A : ex->down_lora_A;
      const Tensor& b = gu ? ex->gate_up_lora_B : ex->down_lora_B;
      if (!a.defined()) continue;
      const std::string p = expert_prefix(name, *ex, gu);
      put(p + ".lora_A.weight", a.reshape({-1, a.size(2)}));
      put(p + ".lora_B.weight", b.permute({1, 2, 0}).reshape({b.size(1), -1}));
      const std::string param = gu ? "gate_up_proj" : "down_proj";
      if (std::find(params.begin(), params.end(), param) == params.end()) params.push_back(param);
    }
  if (cpu.empty()) throw Error("save_adapter: the model has no adapters");
  std::sort(params.begin(), params.end(), [](const std::string& a, const std::string&) { return a == "gate_up_proj"; });
  std::vector<io::TensorToWrite> items;
  for (auto& [name, t] : cpu)
    items.push_back({name, io::DType::F32, t.sizes().vec(), t.data_ptr(), static_cast<size_t>(t.nbytes())});
  io::write_safetensors(dir + "/adapter_model.safetensors", items);
  json rank_pattern = json::object(), alpha_pattern = json::object();
  if (std::find(params.begin(), params.end(), "gate_up_proj") != params.end()) {
    rank_pattern[".*\\.gate_up_proj"] = 2 * c.r;
    alpha_pattern[".*\\.gate_up_proj"] = 2 * c.alpha;
  }
  json j = {{"peft_type", "LORA"},
            {"task_type", "CAUSAL_LM"},
            {"base_model_name_or_path", base_model},
            {"r", c.r},
            {"lora_alpha", c.alpha},
            {"lora_dropout", c.dropout},
            {"target_modules", std::vector<std::string>(kinds.begin(), kinds.end())},
            {"target_parameters", params.empty() ? json(nullptr) : json(params)},
            {"rank_pattern", rank_pattern},
            {"alpha_pattern", alpha_pattern},
            {"use_rslora", c.use_rslora},
            {"bias", "none"},
            {"fan_in_fan_out", false},
            {"init_lora_weights", true},
            {"inference_mode", true},
            {"use_dora", false},
            {"modules_to_save", nullptr},
            {"layers_to_transform", nullptr}};
  write_file_atomic(dir + "/adapter_config.json", j.dump(2) + "\n");
}

void load_adapter_weights(CausalLM& model, const std::string& dir) {
  const std::string path = dir + "/adapter_model.safetensors";
  if (!std::filesystem::exists(path)) throw Error(dir + ": no adapter_model.safetensors beside adapter_config.json");
  auto file = io::SafetensorsFile::open(path);
  std::set<std::string> unused;
  for (const auto& tv : file->tensors()) unused.insert(tv.name);
  at::NoGradGuard no_grad;
  // The file's tensor `key` (PEFT writes names without the adapter name; some tools keep ".default").
  auto read = [&](const std::string& key) {
    std::string k = key;
    const io::TensorView* tv = file->find(k);
    if (!tv) {
      k = key.substr(0, key.size() - std::string(".weight").size()) + ".default.weight";
      tv = file->find(k);
    }
    if (!tv) throw Error(path + ": missing adapter tensor '" + key + "'");
    unused.erase(k);
    at::ScalarType st = tv->dtype == io::DType::F32    ? at::kFloat
                        : tv->dtype == io::DType::BF16 ? at::kBFloat16
                        : tv->dtype == io::DType::F16  ? at::kHalf
                                                       : throw Error(path + ": adapter tensor '" + k + "' must be F32, BF16 or F16");
    return std::make_pair(k, at::from_blob(const_cast<uint8_t*>(tv->data), tv->shape, at::TensorOptions().dtype(st)));
  };
  auto copy = [&](Tensor dst, const std::string& key, const std::function<Tensor(const Tensor&)>& to_ours) {
    auto [k, src] = read(key);
    std::vector<int64_t> want = dst.sizes().vec();
    Tensor ours;
    try {
      ours = to_ours(src);
    } catch (const c10::Error&) {
    }
    if (!ours.defined() || ours.sizes().vec() != want)
      throw Error(path + ": adapter tensor '" + k + "' has shape " + c10::str(src.sizes()) +
                  ", which does not fit the model's layer (its r, or the base, differ)");
    dst.copy_(ours);
  };
  auto same = [](const Tensor& t) { return t; };
  for (auto& [name, lin] : decoder_linears(model))
    if (lin->has_lora()) {
      copy(lin->lora_A->weight, kPrefix + name + ".lora_A.weight", same);
      copy(lin->lora_B->weight, kPrefix + name + ".lora_B.weight", same);
    }
  for (auto& [name, ex] : routed_experts(model))
    for (bool gu : {true, false}) {
      Tensor a = gu ? ex->gate_up_lora_A : ex->down_lora_A, b = gu ? ex->gate_up_lora_B : ex->down_lora_B;
      if (!a.defined()) continue;
      const int64_t E = a.size(0), r = a.size(1), out = b.size(1);
      const std::string p = expert_prefix(name, *ex, gu);
      copy(a, p + ".lora_A.weight", [&](const Tensor& s) { return s.reshape({E, r, -1}); });
      copy(b, p + ".lora_B.weight", [&](const Tensor& s) { return s.reshape({out, r, E}).permute({2, 0, 1}); });
    }
  if (!unused.empty())
    throw Error(path + ": " + std::to_string(unused.size()) + " adapter tensor(s) match no adapted layer, e.g. '" +
                *unused.begin() + "'");
}

}  // namespace grpo::model

#include "model/checkpoint.h"

#include <algorithm>
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>

#include "io/safetensors.h"
#include "model/lora.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::model {

using io::DType;
using io::SafetensorsCheckpoint;
using io::TensorView;
using json = nlohmann::json;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

at::ScalarType scalar_type(DType d) {
  switch (d) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::BOOL: return at::kBool;
    case DType::F8_E4M3: return at::kFloat8_e4m3fn;
    case DType::F8_E5M2: return at::kFloat8_e5m2;
  }
  return at::kFloat;
}

DType file_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    case at::kDouble: return DType::F64;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    default: throw Error(std::string("cannot save tensors of dtype ") + c10::toString(t));
  }
}

// Reads checkpoint tensors as CPU tensors, dequantising FP8 block-scaled weights.
class WeightReader {
 public:
  WeightReader(const SafetensorsCheckpoint& ck, const ModelConfig& c) : ck_(ck), config_(c) {}

  bool has(const std::string& name) const { return ck_.find(name) != nullptr; }

  Tensor read(const std::string& name) {
    const TensorView& tv = ck_.get(name);
    used_.insert(name);
    Tensor x = at::from_blob(const_cast<uint8_t*>(tv.data), tv.shape, at::TensorOptions().dtype(scalar_type(tv.dtype)));
    if (tv.dtype != DType::F8_E4M3 && tv.dtype != DType::F8_E5M2) return x;
    const std::string scale_name = name + "_scale_inv";
    const TensorView* sv = ck_.find(scale_name);
    if (!sv) throw Error(ck_.file_of(name) + ": FP8 tensor '" + name + "' has no '" + scale_name + "'");
    used_.insert(scale_name);
    if (tv.shape.size() != 2) throw Error(ck_.file_of(name) + ": FP8 tensor '" + name + "' is not 2-D");
    const int64_t br = config_.fp8_block_rows ? config_.fp8_block_rows : 128;
    const int64_t bc = config_.fp8_block_cols ? config_.fp8_block_cols : 128;
    const int64_t rows = tv.shape[0], cols = tv.shape[1];
    std::vector<int64_t> want = {(rows + br - 1) / br, (cols + bc - 1) / bc};
    if (sv->shape != want)
      throw Error(ck_.file_of(scale_name) + ": tensor '" + scale_name + "' has shape " + shape_str(sv->shape) +
                  ", expected " + shape_str(want) + " for " + std::to_string(br) + "x" + std::to_string(bc) +
                  " blocks of " + shape_str(tv.shape));
    Tensor scale = at::from_blob(const_cast<uint8_t*>(sv->data), sv->shape,
                                 at::TensorOptions().dtype(scalar_type(sv->dtype))).to(at::kFloat);
    scale = scale.repeat_interleave(br, 0).narrow(0, 0, rows).repeat_interleave(bc, 1).narrow(1, 0, cols);
    return x.to(at::kFloat) * scale;
  }

  // Copies checkpoint tensor `name` into `dst` (any dtype/device) after checking the shape.
  void load_into(Tensor dst, const std::string& name) {
    Tensor src = read(name);
    if (src.sizes() != dst.sizes())
      throw Error(ck_.file_of(name) + ": tensor '" + name + "' has shape " + shape_str(src.sizes()) +
                  " but the config needs " + shape_str(dst.sizes()));
    if (!src.is_floating_point() && dst.is_floating_point())
      throw Error(ck_.file_of(name) + ": tensor '" + name + "' has integer dtype " +
                  c10::toString(src.scalar_type()) + ", expected a floating-point weight");
    dst.copy_(src);
  }

  std::vector<std::string> unused() const {
    std::vector<std::string> out;
    for (const auto& n : ck_.names())
      if (!used_.count(n) && !ends_with(n, "rotary_emb.inv_freq")) out.push_back(n);
    return out;
  }

 private:
  const SafetensorsCheckpoint& ck_;
  const ModelConfig& config_;
  std::set<std::string> used_;
};

// Fills a stacked routed-expert parameter from per-expert or fused checkpoint tensors.
void load_experts(WeightReader& r, Tensor dst, const std::string& prefix, const std::string& which,
                  int64_t intermediate) {
  if (r.has(prefix + which)) return r.load_into(dst, prefix + which);
  for (int64_t e = 0; e < dst.size(0); ++e) {
    std::string base = prefix + std::to_string(e) + ".";
    if (which == "gate_up_proj") {
      r.load_into(dst[e].narrow(0, 0, intermediate), base + "gate_proj.weight");
      r.load_into(dst[e].narrow(0, intermediate, intermediate), base + "up_proj.weight");
    } else {
      r.load_into(dst[e], base + "down_proj.weight");
    }
  }
}

}  // namespace

at::ScalarType parse_dtype_name(const std::string& name) {
  if (name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16") return at::kHalf;
  throw Error("unsupported dtype '" + name + "' (supported: float32, bfloat16, float16)");
}

std::shared_ptr<CausalLM> load_model(const std::string& dir, const LoadOptions& options) {
  if (is_adapter_dir(dir)) {
    // A PEFT adapter: its base (base_model_name_or_path), then the adapter on top, as
    // PeftModel.from_pretrained does.
    std::string base;
    LoraConfig lc = read_adapter_config(dir, &base);
    auto model = load_model(resolve_adapter_base(dir, base), options);
    add_lora(*model, lc, 0);
    load_adapter_weights(*model, dir);
    return model;
  }
  ModelConfig config = load_model_config(dir);
  SafetensorsCheckpoint ck = SafetensorsCheckpoint::open_dir(dir);
  // MTP modules are optional in checkpoints (transformers does not save them): keep the ones present.
  int64_t mtp = 0;
  while (mtp < config.num_nextn_predict_layers &&
         ck.find("model.layers." + std::to_string(config.num_hidden_layers + mtp) + ".eh_proj.weight"))
    ++mtp;
  if (mtp < config.num_nextn_predict_layers)
    std::cerr << "grpo: note: " << dir << " holds " << mtp << " of " << config.num_nextn_predict_layers
              << " MTP modules named in config.json; loading without the missing ones\n";
  config.num_nextn_predict_layers = mtp;
  if (options.without_lm_head) config.tie_word_embeddings = true;

  auto model = std::make_shared<CausalLM>(config);
  WeightReader reader(ck, config);
  {
    at::NoGradGuard no_grad;
    auto load_all = [&](const std::string& name, Tensor t) {
      static const std::string gu = "mlp.experts.gate_up_proj", dp = "mlp.experts.down_proj";
      if (ends_with(name, gu))
        load_experts(reader, t, name.substr(0, name.size() - std::string("gate_up_proj").size()), "gate_up_proj",
                     config.moe_intermediate_size);
      else if (ends_with(name, dp))
        load_experts(reader, t, name.substr(0, name.size() - std::string("down_proj").size()), "down_proj",
                     config.moe_intermediate_size);
      else
        reader.load_into(t, name);
    };
    for (auto& kv : model->named_parameters(true)) load_all(kv.key(), kv.value());
    for (auto& kv : model->named_buffers(true)) load_all(kv.key(), kv.value());
  }
  auto unused = reader.unused();
  if (options.without_lm_head)
    unused.erase(std::remove_if(unused.begin(), unused.end(),
                                [](const std::string& n) { return n == "lm_head.weight" || n == "score.weight"; }),
                 unused.end());
  if (!unused.empty()) {
    std::cerr << "grpo: warning: " << dir << ": " << unused.size() << " checkpoint tensor(s) not used by the model, e.g. '"
              << unused.front() << "'\n";
  }
  model->to_device_dtype(options.device, options.dtype);
  return model;
}

void init_weights(CausalLM& model, uint64_t seed) {
  at::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double std = model.config().initializer_range;
  for (auto& kv : model.named_parameters(true)) {
    Tensor t = kv.value();
    const std::string& name = kv.key();
    if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
      t.zero_();  // linear biases
    } else if (t.dim() == 1) {
      t.fill_(1.0);  // RMSNorm weights
    } else {
      Tensor r = at::empty(t.sizes(), at::TensorOptions().dtype(at::kFloat));
      r.normal_(0.0, std, gen);
      t.copy_(r);
    }
    (void)name;
  }
  for (auto& kv : model.named_buffers(true)) kv.value().zero_();  // e_score_correction_bias
}

void save_model(CausalLM& model, const std::string& config_json, const std::string& dir,
                const SaveOptions& options) {
  // A model with adapters is written merged (each adapter folded into its weight), as transformers loads it.
  if (has_lora(model)) return save_model(*merged_copy(model), config_json, dir, options);
  make_directories(dir);
  const ModelConfig& c = model.config();
  // HF names -> contiguous CPU tensors in the on-disk dtype.
  std::vector<std::pair<std::string, Tensor>> out;
  auto emit = [&](const std::string& name, const Tensor& t, at::ScalarType dt) {
    out.emplace_back(name, t.detach().to(at::kCPU).to(dt).contiguous());
  };
  const int64_t I = c.moe_intermediate_size;
  for (auto& kv : model.named_parameters(true)) {
    const std::string& name = kv.key();
    const Tensor& t = kv.value();
    if (ends_with(name, "mlp.experts.gate_up_proj")) {
      std::string prefix = name.substr(0, name.size() - std::string("gate_up_proj").size());
      for (int64_t e = 0; e < t.size(0); ++e) {
        emit(prefix + std::to_string(e) + ".gate_proj.weight", t[e].narrow(0, 0, I), options.dtype);
        emit(prefix + std::to_string(e) + ".up_proj.weight", t[e].narrow(0, I, I), options.dtype);
      }
    } else if (ends_with(name, "mlp.experts.down_proj")) {
      std::string prefix = name.substr(0, name.size() - std::string("down_proj").size());
      for (int64_t e = 0; e < t.size(0); ++e) emit(prefix + std::to_string(e) + ".down_proj.weight", t[e], options.dtype);
    } else {
      emit(name, t, options.dtype);
    }
  }
  for (auto& kv : model.named_buffers(true)) emit(kv.key(), kv.value(), at::kFloat);
  for (const auto& [name, t] : options.extra_tensors) emit(name, t, options.dtype);

  // Shard by size, in name order, like transformers.
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<std::vector<size_t>> shards(1);
  int64_t shard_bytes = 0, total = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    int64_t n = out[i].second.nbytes();
    if (shard_bytes > 0 && shard_bytes + n > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += n;
    total += n;
  }
  // Remove a previous checkpoint's files so that the loader cannot mix old and new weights.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    std::string f = entry.path().filename().string();
    if (f == "model.safetensors.index.json" || f == "model.safetensors" ||
        (f.rfind("model-", 0) == 0 && ends_with(f, ".safetensors")))
      std::filesystem::remove(entry.path(), ec);
  }
  json weight_map = json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char fname[64];
    if (shards.size() == 1)
      snprintf(fname, sizeof fname, "model.safetensors");
    else
      snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    std::vector<io::TensorToWrite> items;
    for (size_t i : shards[s]) {
      const Tensor& t = out[i].second;
      items.push_back({out[i].first, file_dtype(t.scalar_type()), t.sizes().vec(), t.data_ptr(), (size_t)t.nbytes()});
      weight_map[out[i].first] = fname;
    }
    io::write_safetensors(dir + "/" + fname, items);
  }
  if (shards.size() > 1) {
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(dir + "/model.safetensors.index.json", index.dump(2) + "\n");
  }

  json cfg = parse_json(config_json, dir + "/config.json");
  cfg.erase("quantization_config");
  cfg.erase("auto_map");  // the weights are transformers' own classes now, not the base's remote code
  cfg["architectures"] = {c.architecture()};
  cfg["dtype"] = options.dtype == at::kBFloat16 ? "bfloat16" : options.dtype == at::kHalf ? "float16" : "float32";
  cfg.erase("torch_dtype");
  for (auto it = options.config_updates.begin(); it != options.config_updates.end(); ++it) cfg[it.key()] = it.value();
  write_file_atomic(dir + "/config.json", cfg.dump(2) + "\n");
}

void copy_weights(CausalLM& dst, CausalLM& src) {
  c10::NoGradGuard no_grad;
  auto src_params = src.named_parameters(true);
  auto src_buffers = src.named_buffers(true);
  auto copy = [](const std::string& name, at::Tensor& d, const at::Tensor* s) {
    if (!s) throw Error("copy weights: the source model has no tensor '" + name + "'");
    if (d.sizes() != s->sizes())
      throw Error("copy weights: '" + name + "' has shape " + c10::str(s->sizes()) + " in the source, " +
                  c10::str(d.sizes()) + " in the destination");
    d.copy_(*s);
  };
  for (auto& kv : dst.named_parameters(true)) copy(kv.key(), kv.value(), src_params.find(kv.key()));
  for (auto& kv : dst.named_buffers(true)) copy(kv.key(), kv.value(), src_buffers.find(kv.key()));
}

}  // namespace grpo::model

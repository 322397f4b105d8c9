// LoRA adapters on the policy's linear layers, in PEFT's conventions, so that an adapter grpo
// writes loads with `PeftModel.from_pretrained` onto the transformers base and the other way round:
//   - targets by PEFT's module names (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `q_a_proj`,
//     `q_b_proj`, `kv_a_proj_with_mqa`, `kv_b_proj`, ...: a layer matches when its full name is the target or ends with
//     "." + target), or `all-linear`;
//   - in a dense model `gate_proj`, `up_proj`, `down_proj` are the MLP's linear layers; in a model
//     with routed experts they adapt the routed experts, as PEFT does on transformers 5,
//     whose experts are fused weights (`mlp.experts.gate_up_proj` (E, 2I, H), `down_proj`): PEFT
//     turns those names into `target_parameters`, gives the fused gate_up weight rank 2r and alpha
//     2 * lora_alpha, and leaves dense and shared-expert MLPs without adapters; so does grpo;
//   - scaling lora_alpha / r (lora_alpha / sqrt(r) with use_rslora);
//   - an adapter directory holds adapter_config.json and adapter_model.safetensors (fp32) with
//     PEFT's tensor names: `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, and for
//     the experts PEFT's stacked layout (lora_A (E*r, in), lora_B (out, r*E)) under
//     `mlp.experts.base_layer.lora_*` (gate_up, when down is adapted too) and `mlp.experts.lora_*`.
// The multi-token-prediction layers (not part of transformers' model) get no adapters.
#pragma once

#include <string>
#include <vector>

#include "model/causal_lm.h"

namespace grpo::model {

struct LoraConfig {
  int64_t r = 0;  // 0: no adapters
  double alpha = 16;
  double dropout = 0;
  std::vector<std::string> target_modules = {"all-linear"};
  bool use_rslora = false;
  double scaling() const;
};

// Adds an adapter to every targeted linear layer (adapters drawn from `seed`, lora_B zero, so the
// model is unchanged) and returns their names. Throws grpo::Error when a target matches no layer,
// naming it and the layer names there are.
std::vector<std::string> add_lora(CausalLM& model, const LoraConfig& config, uint64_t seed);

bool has_lora(CausalLM& model);
// The adapters' tensors (lora_A and lora_B of every adapted layer), in name order.
std::vector<std::pair<std::string, Tensor>> lora_parameters(CausalLM& model);
// Switches every adapter on or off; off, the model computes as its base.
void set_adapters_enabled(CausalLM& model, bool enabled);

// The base alone for the scope of the guard (the reference model under LoRA: no second copy).
class AdaptersDisabled {
 public:
  explicit AdaptersDisabled(CausalLM& m) : m_(m) { set_adapters_enabled(m_, false); }
  ~AdaptersDisabled() { set_adapters_enabled(m_, true); }
  AdaptersDisabled(const AdaptersDisabled&) = delete;
  AdaptersDisabled& operator=(const AdaptersDisabled&) = delete;

 private:
  CausalLM& m_;
};

// True when `dir` holds adapter_config.json and no config.json (a PEFT adapter, not a full model).
bool is_adapter_dir(const std::string& dir);
// adapter_config.json of `dir` -> the config and base_model_name_or_path. Errors name the file.
LoraConfig read_adapter_config(const std::string& dir, std::string* base_model = nullptr);
// The directory of an adapter's base: base_model_name_or_path as written when absolute; when
// relative, against the adapter's directory first (a run's checkpoints name "../base"), else as is.
// Throws grpo::Error when neither holds a config.json (grpo reads local directories only).
std::string resolve_adapter_base(const std::string& adapter_dir, const std::string& base_model);
// A copy of the model without adapters, each folded into its base weight (W + scaling B A, as
// PEFT's merge_and_unload), on the same device and in the same dtype.
std::shared_ptr<CausalLM> merged_copy(CausalLM& model);
// Writes adapter_config.json and adapter_model.safetensors (fp32) into `dir`.
void save_adapter(CausalLM& model, const LoraConfig& config, const std::string& base_model,
                  const std::string& dir);
// Copies the adapter tensors of `dir` into the model's adapters (added with the same config).
// Errors name the file and the tensor missing, unused or of another shape.
void load_adapter_weights(CausalLM& model, const std::string& dir);

}  // namespace grpo::model

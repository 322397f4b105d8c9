// Hugging Face checkpoint directories <-> CausalLM.
//
// Loading accepts what DeepSeek and transformers write: one model.safetensors or shards listed
// in model.safetensors.index.json; F32/F16/BF16 weights, and F8_E4M3 weights with
// `<name>_scale_inv` block scales (quantization_config.weight_block_size, 128x128 in DeepSeek-V3),
// dequantised on load; routed experts per expert (`experts.E.gate_proj.weight`) or fused
// (`experts.gate_up_proj`). Saving writes per-expert HF names that transformers loads.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/causal_lm.h"

namespace grpo::model {

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  // The backbone alone (a reward model's, or a causal LM's as a reward model's start): no lm_head
  // is built (the model behaves as if tie_word_embeddings were set) and the checkpoint's lm_head
  // and score weights are left unread without a warning.
  bool without_lm_head = false;
};

// Loads config.json and the weights in `dir`. Errors name the file and the tensor.
std::shared_ptr<CausalLM> load_model(const std::string& dir, const LoadOptions& options = {});

// Random initialisation as transformers does it: normal(0, initializer_range) for every matrix and
// embedding, ones for norms, zeros for e_score_correction_bias. Deterministic for a seed (CPU).
void init_weights(CausalLM& model, uint64_t seed);

// Copies every parameter and buffer of `src` into `dst` (the same architecture) in place, on dst's
// device and in dst's dtypes, so that views of dst's tensors (an engine, CUDA graphs) see the new
// values. Throws grpo::Error naming the first tensor missing from `src` or of another shape.
void copy_weights(CausalLM& dst, CausalLM& src);

struct SaveOptions {
  at::ScalarType dtype = at::kFloat;              // on-disk dtype of floating weights
  int64_t max_shard_bytes = int64_t(5) << 30;     // larger checkpoints are sharded with an index
  std::vector<std::pair<std::string, at::Tensor>> extra_tensors;  // written beside the model's (e.g. score.weight)
  nlohmann::json config_updates = nlohmann::json::object();       // merged into config.json last (architectures, ...)
};

// Writes config.json (the given config text with dtype/architectures updated and any
// quantization_config removed) and the weights under HF names into `dir`, each file atomically.
// `config_json` is the original config.json text (kept so that fields grpo does not model survive).
void save_model(CausalLM& model, const std::string& config_json, const std::string& dir,
                const SaveOptions& options = {});

// "float32" | "bfloat16" | "float16" -> dtype; throws grpo::Error otherwise.
at::ScalarType parse_dtype_name(const std::string& name);

}  // namespace grpo::model

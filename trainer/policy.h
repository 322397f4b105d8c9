// The model a stage trains, as every stage type sets it up: fp32 master weights (what the
// optimizer updates and checkpoints hold), a bf16 compute copy when the recipe asks for bf16, the
// tokenizer and eos token, and the tokenizer/generation files every checkpoint carries.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/causal_lm.h"
#include "model/lora.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "trainer/recipe.h"
#include "trainer/run_state.h"

namespace grpo::trainer {

struct Policy {
  using Model = model::CausalLM;
  std::string config_text;         // the model's config.json
  std::shared_ptr<Model> master;   // fp32
  std::shared_ptr<Model> compute;  // master itself in fp32, a bf16 copy with bf16
  std::shared_ptr<const text::Tokenizer> tok;
  int64_t eos = -1;
  HubFiles hub;
  // The chat template (the recipe's chat_template file, else the model's), loaded for prompt_format
  // chat; null otherwise. A recipe's file travels into every checkpoint as chat_template.jinja.
  std::shared_ptr<const text::ChatTemplate> chat;

  // LoRA (lora_r > 0): master == compute holds the frozen base (bf16 with bf16, else fp32) and fp32
  // adapters; checkpoints are PEFT adapters whose base is `adapter_base` (the model_dir, or for a
  // random base the stage's base/ directory, written with the first checkpoint).
  model::LoraConfig lora;
  std::string adapter_base;
  bool save_merged = false;
  bool has_lora() const { return lora.r > 0; }

  // What the optimizer updates: every master weight, or the adapters alone.
  std::vector<at::Tensor> trainable_parameters() const;
  std::vector<int64_t> encode(const std::string& text, bool special_tokens) const;
  // Adds the compute copy's gradients into the master's (in fp32) and clears them; no-op in fp32.
  // With a sharded master they go into `held_grads` instead, every tensor's, until they are reduced
  // onto their owners.
  void accumulate_gradients();
  // Rounds the master weights into the compute copy (with a sharded master: the tensors this rank
  // holds, and every buffer); no-op in fp32.
  void sync();
  // A frozen copy of the compute model on `device`, adapters included, with its current weights
  // (what an asynchronous rollout samples from while the compute model trains).
  std::shared_ptr<Model> replica(const at::Device& device) const;

  // ZeRO with a bf16 compute copy (zero_stage 1 and 2, full fine-tuning): the fp32 master keeps only
  // the tensors this rank owns, mine[i] for master parameter i; the others' data is released (an
  // empty tensor, so that any use of it fails loudly) and their compute copy arrives from their owner.
  std::vector<bool> mine;
  std::vector<at::Tensor> held_grads;  // fp32, per master parameter, between backward passes and the reduce
  bool master_sharded() const { return !mine.empty(); }
  void shard_master(const std::vector<bool>& owned);
  // Bytes of fp32 master weights this rank holds, and of the whole model.
  std::pair<int64_t, int64_t> master_bytes() const;
  // The fp32 master weights as a Hugging Face directory with the tokenizer and generation files,
  // and with `bf16_copy` the same in bf16 under dir/bf16. Under LoRA: the adapter (PEFT's files)
  // with the tokenizer files, and with save_merged the merged model under dir/merged.
  void save_weights(const std::string& dir, bool bf16_copy) const;
};

// Loads model_dir, or a random model from model_config (seed model_seed), onto the stage's device.
// Errors name `recipe_path`.
// With `without_lm_head` the model is a backbone (a reward model's): no lm_head is built or read.
Policy load_policy(const StageSettings& s, const std::string& recipe_path, bool without_lm_head = false);
// The stage's starting weights again (for a reference model), in `dtype`.
std::shared_ptr<model::CausalLM> load_base_model(const StageSettings& s, const std::string& config_text,
                                                            at::ScalarType dtype, bool without_lm_head = false);

// Linear warm-up over warmup_ratio * total_steps, then constant or cosine decay to 0 at total_steps.
double scheduled_learning_rate(const OptimSettings& o, int64_t step, int64_t total_steps);

}  // namespace grpo::trainer

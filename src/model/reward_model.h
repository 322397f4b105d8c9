// A scalar reward model on the policy architecture, in the layout of transformers'
// `...ForSequenceClassification` classes (DeepseekV3, Qwen2, Llama, ...) with one label: the decoder (`model.*`) and
// `score.weight` (1, hidden), no lm_head. The reward of a token sequence is the score of the final
// hidden state at the last token that is not the pad token (config.json pad_token_id), the rule
// transformers applies, so a checkpoint written here scores the same there.
#pragma once

#include <torch/nn/modules/linear.h>

#include <memory>
#include <string>
#include <vector>

#include "model/checkpoint.h"
#include "model/causal_lm.h"

namespace grpo::model {

struct RewardModel {
  std::shared_ptr<CausalLM> backbone;  // built without an lm_head
  torch::nn::Linear score{nullptr};               // hidden -> 1, no bias, fp32
  int64_t pad_token_id = 0;
  std::string config_text;  // config.json as the checkpoint gave it

  // (B) fp32 rewards of the sequences (right-padded into one batch). Differentiable in grad mode.
  at::Tensor rewards(const std::vector<std::vector<int64_t>>& sequences);
};

// The score of each row of a right-padded batch: hidden states (B, T, H) at the last non-pad
// position of ids (B, T), through `score`.
at::Tensor score_last_tokens(const at::Tensor& hidden, const at::Tensor& ids, int64_t pad_token_id,
                             const torch::nn::Linear& score);

// The pad token transformers will use: config.json's pad_token_id, else eos_token_id.
int64_t reward_pad_token_id(const std::string& config_text, const ModelConfig& config);

// Loads a reward-model directory (score.weight present). Errors name the file.
RewardModel load_reward_model(const std::string& dir, const LoadOptions& options = {});

// A score head for `backbone`, initialised as transformers does (normal(0, initializer_range)).
torch::nn::Linear new_score_head(const CausalLM& backbone, uint64_t seed);

// Writes the reward model as a transformers sequence-classification checkpoint: the backbone's
// weights and score.weight, config.json with architectures ...ForSequenceClassification, one
// label and pad_token_id.
void save_reward_model(CausalLM& backbone, const at::Tensor& score_weight, const std::string& config_text,
                       int64_t pad_token_id, const std::string& dir, at::ScalarType dtype = at::kFloat);

}  // namespace grpo::model

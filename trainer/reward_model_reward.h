// The reward `reward_model`: a trained reward model (a reward_model stage's checkpoint, or any
// transformers ...ForSequenceClassification checkpoint of a supported architecture with one label)
// scores prompt + completion. The prompt is formatted as the reward-model stage formatted it (its
// grpo_reward_model.json: prompt template, chat format, system prompt; plain text without one).
// Options: {"path": DIR, "device": "cpu" | "cuda" | "cuda:N", "max_batch": 32}. The model loads at
// the first item; calls from many threads (a reward worker's, a trainer's scoring threads) are
// gathered into batched forwards of up to max_batch sequences.
#pragma once

#include "rewards/reward.h"

namespace grpo::trainer {

// Adds `reward_model` to `registry` (a no-op when it is there already).
void register_reward_model_reward(rewards::RewardRegistry& registry);

}  // namespace grpo::trainer

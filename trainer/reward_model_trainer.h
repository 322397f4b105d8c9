// A reward-model stage (type: reward_model): a scalar head (score.weight) on the policy
// architecture, trained from preference pairs with the Bradley-Terry loss
// -log sigmoid(r(prompt, chosen) - r(prompt, rejected)), as TRL's RewardTrainer. The backbone starts
// from the stage's model (typically the sft result), the head from transformers' initialisation.
// The prompt goes through the stage's prompt format (template or chat), the completion follows it
// without eos, and pairs longer than max_length are skipped. Each step takes
// per_device_train_batch_size pairs in a seeded order over num_train_epochs; metrics: loss,
// accuracy (share of pairs ranked right), margin (mean reward gap), and eval_loss / eval_accuracy
// on held-out pairs (trainer/preferences.h). Checkpoints are transformers
// ...ForSequenceClassification directories (plus grpo_reward_model.json, the prompt format the
// reward `reward_model` reproduces), with exact resume.
#pragma once

#include <string>

#include "trainer/recipe.h"

namespace grpo::dist {
class Communicator;
}

namespace grpo::trainer {

// Returns false when a stop was requested (a checkpoint of the last finished step is saved).
bool run_reward_model_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out_dir, bool resume,
                   dist::Communicator* comm = nullptr);

}  // namespace grpo::trainer

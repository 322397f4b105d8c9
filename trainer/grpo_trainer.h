// A GRPO stage (type: grpo), the R1-Zero loop: sample G completions per prompt with the rollout
// engine (sharing the policy's tensors), score them with the rewards, compute group-normalised
// advantages, and update the policy with the GRPO objective; evaluate, checkpoint and resume.
#pragma once

#include <string>

#include "trainer/recipe.h"

namespace grpo::dist {
class Communicator;
}

namespace grpo::trainer {

// Returns false when a stop was requested (a checkpoint of the last finished step is saved).
bool run_grpo_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out_dir, bool resume,
                   dist::Communicator* comm = nullptr);

}  // namespace grpo::trainer

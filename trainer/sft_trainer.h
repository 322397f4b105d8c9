// A supervised fine-tuning stage (type: sft): prompt -> completion examples (JSONL fields
// prompt_field and completion_field, or the built-in task's problems and answers), the prompt
// through the stage's prompt_template, the loss on the completion and its eos token only. Examples
// are packed into rows of max_length tokens (trainer/packing.h); num_train_epochs passes over the
// rows in a seeded order, per_device_train_batch_size rows per AdamW step with the recipe's
// schedule and clipping; the held-out loss on eval data; checkpoints as Hugging Face directories
// and exact resume (the step alone says where in the data the run is).
#pragma once

#include <string>

#include "trainer/recipe.h"

namespace grpo::dist {
class Communicator;
}

namespace grpo::trainer {

// Returns false when a stop was requested (a checkpoint of the last finished step is saved).
bool run_sft_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out_dir, bool resume,
                   dist::Communicator* comm = nullptr);

}  // namespace grpo::trainer

// A rejection-sampling stage (type: rejection_sampling, DeepSeek-R1's stage 3): num_samples
// completions for each training prompt from the stage's model (rollout keys: temperature, top_p,
// max_completion_length), scored by the stage's rewards and filtered (trainer/rejection_filter.h).
// Writes OUT/data.jsonl, lines {"prompt", "completion", "answer"} that an sft stage reads
// (`train_file: stage:NAME`), and OUT/stats.json: prompts, samples, kept, kept per prompt (a
// histogram) and rejections per reason. Works through the prompts in chunks of per_step_prompts;
// a killed run resumes after the last finished chunk.
#pragma once

#include <string>

#include "trainer/recipe.h"

namespace grpo::dist {
class Communicator;
}

namespace grpo::trainer {

// Returns false when a stop was requested (the chunks done so far are kept for --resume).
// With several ranks each samples its share of every chunk of prompts and rank 0 writes the files.
bool run_rejection_sampling_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out_dir,
                                  bool resume, dist::Communicator* comm = nullptr);

}  // namespace grpo::trainer

// The R1-Zero loop: sample G completions per prompt with the rollout engine (sharing the policy's
// tensors), score them with the rewards, compute group-normalised advantages, and update the
// policy with the GRPO objective; evaluate, checkpoint and resume. One GRPO stage of a recipe
// (trainer/recipe.h) per call; `train` runs a recipe's stages in order.
#pragma once

#include <string>

#include "trainer/recipe.h"

namespace grpo::trainer {

struct TrainOptions {
  std::string output_dir;  // default: runs/<recipe file name without .yaml>
  bool resume = false;     // continue from OUT/latest; without it OUT must be empty or absent
};

// Runs every stage of `recipe` in order (a recipe with several stages writes OUT/<stage name>/).
// Throws grpo::Error on bad input, naming what and where. Returns early, with a checkpoint of the
// last finished step saved, once request_stop() was called (SIGTERM, SIGINT).
void train(const Recipe& recipe, const TrainOptions& options);

// Asks a running train() to stop after the step in progress. Async-signal-safe.
void request_stop();
bool stop_requested();

}  // namespace grpo::trainer

// `grpo train`: a recipe's stages run in order. A one-stage recipe writes OUT itself; a recipe with
// several stages writes OUT/<stage>/ for each and OUT/pipeline.json (trainer/pipeline.h), and a
// later stage may start from an earlier stage's model or data (`stage:NAME`).
#pragma once

#include <string>

#include "trainer/recipe.h"

namespace grpo::trainer {

struct TrainOptions {
  std::string output_dir;  // default: runs/<recipe file name without .yaml>
  bool resume = false;     // continue from OUT's checkpoints; without it OUT must be empty or absent
};

// Throws grpo::Error on bad input, naming what and where. Returns early, with the last finished
// step saved, once request_stop() was called (SIGTERM, SIGINT).
void train(const Recipe& recipe, const TrainOptions& options);

// Asks a running train() to stop after the step in progress. Async-signal-safe.
void request_stop();
bool stop_requested();

}  // namespace grpo::trainer

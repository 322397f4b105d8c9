// `grpo train`: a recipe's stages run in order. A one-stage recipe writes OUT itself; a recipe with
// several stages writes OUT/<stage>/ for each and OUT/pipeline.json (trainer/pipeline.h), and a
// later stage may start from an earlier stage's model or data (`stage:NAME`).
#pragma once

#include <cstdint>
#include <functional>
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

class RunLog;
// The end of step `step` of `total` in every stage that trains: `save` writes a checkpoint every
// `save_every` steps, at the last step, and when a stop was requested; then false, after a line
// saying how to continue ("stopped after <label><step>; ..."; label "step " or "<stage> step ").
bool checkpoint_or_stop(int64_t step, int64_t total, int64_t save_every, const std::string& label, RunLog& log,
                        const std::function<void()>& save);

}  // namespace grpo::trainer

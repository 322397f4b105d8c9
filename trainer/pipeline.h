// The record of a recipe with several stages: OUT/pipeline.json,
//   {"stages": [{"name", "type", "status": "pending|running|done", "output": DIR, "metrics": {...}}]}
// rewritten atomically whenever a stage starts or finishes. A resumed run skips the stages marked
// done (their outputs stand) and continues the one that was running from its own checkpoints.
// "output" is the stage's final checkpoint, what `model_dir: stage:NAME` of a later stage loads, or
// for a rejection-sampling stage its data.jsonl, what `train_file: stage:NAME` reads.
// Torch-free.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "trainer/recipe.h"

namespace grpo::trainer {

class Pipeline {
 public:
  // With `resume`, reads OUT/pipeline.json when there is one; its stages must be the recipe's
  // (same names and types, in order), or the error says which differs.
  // With several ranks each keeps the record and only the main rank (`writes`) writes it.
  Pipeline(std::string out_dir, const Recipe& recipe, bool resume, bool writes = true);

  bool done(size_t stage) const;
  // The final checkpoint of a finished stage; throws naming the stage when it has not finished.
  std::string output_of(const std::string& stage_name) const;
  void start(size_t stage);
  void finish(size_t stage, const std::string& output, const nlohmann::json& metrics);

  const nlohmann::json& record() const { return record_; }

 private:
  void write() const;
  std::string path_;
  bool writes_ = true;
  nlohmann::json record_;
};

// A finished stage's key metrics: the last value of each of loss, eval_loss, reward, accuracy,
// eval_accuracy, eval_reward and kept_fraction in DIR/metrics.jsonl (those present).
nlohmann::json final_metrics(const std::string& stage_dir);

}  // namespace grpo::trainer

// The rewards of a stage as one Scorer: in process or through reward workers, and, with
// `rewards_by_source`, a different combination per data source (a dataset column, `data_source` by
// default, as verl names it): R1's final stage scores reasoning prompts by rules and general
// prompts by a reward model. Items of a source without an entry get the stage's `rewards`.
// Torch-free.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "rewards/rpc.h"
#include "trainer/recipe.h"

namespace grpo::trainer {

// One combination (`spec`) as the stage's settings reach it: in process with its options and
// plugins' rewards, or through the stage's reward workers.
std::unique_ptr<rewards::Scorer> make_reward_scorer(const RewardSettings& r, const std::string& spec, int threads = 1);

// The stage's scorer: make_reward_scorer(r, r.spec), or a SourceScorer when rewards_by_source is set.
std::unique_ptr<rewards::Scorer> make_stage_scorer(const RewardSettings& r, int threads = 1);

class SourceScorer : public rewards::Scorer {
 public:
  SourceScorer(std::string field, std::unique_ptr<rewards::Scorer> fallback,
               std::map<std::string, std::unique_ptr<rewards::Scorer>> by_source);
  // Each item goes to the scorer of its metadata[field] (a string, or a number as its JSON text);
  // results come back in input order.
  std::vector<rewards::RewardResult> score(const std::vector<rewards::RewardItem>& items) override;

 private:
  std::string field_;
  std::unique_ptr<rewards::Scorer> fallback_;
  std::map<std::string, std::unique_ptr<rewards::Scorer>> by_source_;
};

}  // namespace grpo::trainer

// Built-in rewards and weighted combinations of rewards.
//
//   math                  1 if the completion's final answer equals the reference (rewards/math/checker.h);
//                         looks inside the last <answer>...</answer> first. Options: precision,
//                         answer_tag (true), latex (true), expr (true), letters (false).
//   format                1 if the completion matches the R1 template <think>\n...\n</think>\n<answer>\n...\n</answer>
//                         (an RE2 `pattern` option replaces it; the whole completion must match).
//   tag_count             0.25 for each of <think>\n, \n</think>\n, \n<answer>\n, \n</answer> present exactly once.
//   overlong              DAPO's soft overlong penalty: 0 up to max_length - cache_length, then a
//                         linear ramp to -1 at max_length, -1 beyond. Length: metadata.completion_tokens
//                         when given, else UTF-8 characters. Options: max_length (4096), cache_length (512).
//   language_consistency  share of the chain of thought (inside <think>, else everything) written in
//                         `language` ("en" Latin words, "zh" CJK characters), as R1's language reward.
//   repetition            -(1 - distinct n-grams / n-grams) * max_penalty over lower-cased words.
//                         Options: ngram (3), max_penalty (1.0).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "rewards/reward.h"

namespace grpo::rewards {

void register_builtin_rewards(RewardRegistry& registry);
// `code` and `code_binary` (rewards/code_reward.cpp): tests run in the sandbox.
void register_code_rewards(RewardRegistry& registry);

// The process-wide registry, with the built-ins registered.
RewardRegistry& default_registry();

// A weighted sum of rewards, from a spec such as "math,format:0.2" (weight 1 when omitted) and
// optional per-reward options {"math": {...}}. reward = sum of weight * reward; components hold
// each part's unweighted value. An item whose part throws gets that part's error (named) and no
// credit for it; the other parts still count.
class CombinedReward : public Reward {
 public:
  CombinedReward(const std::string& spec, const RewardRegistry& registry,
                 const nlohmann::json& options = nlohmann::json::object());
  RewardResult score(const RewardItem& item) const override;
  bool slow() const override;  // when any part is
  const std::vector<std::pair<std::string, double>>& parts() const { return weights_; }

 private:
  std::vector<std::pair<std::string, double>> weights_;
  std::vector<std::unique_ptr<Reward>> rewards_;
};

// Scores every item (on `threads` threads), never throwing: failures become per-item errors.
std::vector<RewardResult> score_all(const Reward& reward, const std::vector<RewardItem>& items, int threads = 1);

}  // namespace grpo::rewards

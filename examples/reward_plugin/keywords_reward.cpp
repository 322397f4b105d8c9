// An example C++ reward plugin: the share of `metadata.keywords` that the completion mentions
// (case-insensitive). Build: CMake target `keywords_reward` (examples/reward_plugin/CMakeLists.txt).
// Use: grpo reward --plugin build/examples/reward_plugin/libkeywords_reward.so --name keywords ...
#include <algorithm>
#include <cctype>

#include "rewards/plugin.h"

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return (char)std::tolower(c); });
  return s;
}

class KeywordsReward : public grpo::rewards::Reward {
 public:
  explicit KeywordsReward(const nlohmann::json& options) : min_keywords_(options.value("min_keywords", 1)) {}

  grpo::rewards::RewardResult score(const grpo::rewards::RewardItem& item) const override {
    if (!item.metadata.contains("keywords") || !item.metadata["keywords"].is_array())
      throw std::invalid_argument("metadata.keywords (an array of strings) is required");
    const auto& kws = item.metadata["keywords"];
    if ((int)kws.size() < min_keywords_) throw std::invalid_argument("too few keywords");
    std::string text = lower(item.completion);
    int found = 0;
    for (const auto& k : kws) found += text.find(lower(k.get<std::string>())) != std::string::npos;
    grpo::rewards::RewardResult r;
    r.reward = kws.empty() ? 0.0 : (double)found / (double)kws.size();
    r.components["keywords/found"] = found;
    return r;
  }

 private:
  int min_keywords_;
};

}  // namespace

GRPO_REWARD_PLUGIN(registry) {
  registry.add("keywords", [](const nlohmann::json& o) { return std::make_unique<KeywordsReward>(o); },
               "share of metadata.keywords mentioned in the completion (example plugin)");
}

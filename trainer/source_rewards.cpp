#include "trainer/source_rewards.h"

#include "rewards/builtin.h"
#include "rpc/security.h"

namespace grpo::trainer {

std::unique_ptr<rewards::Scorer> make_reward_scorer(const RewardSettings& r, const std::string& spec, int threads) {
  if (r.workers.empty())
    return std::make_unique<rewards::LocalScorer>(
        std::make_shared<rewards::CombinedReward>(spec, rewards::default_registry(), r.options), threads);
  rewards::ClientOptions co;
  co.spec = spec;
  co.timeout_seconds = r.timeout;
  co.security.tls_ca = r.tls_ca;
  if (!r.token_file.empty()) co.security.token = rpc::read_token_file(r.token_file);
  co.on_retry = [](const std::string& what) { fprintf(stderr, "grpo train: reward call failed: %s\n", what.c_str()); };
  return std::make_unique<rewards::RewardClient>(r.workers, co);
}

std::unique_ptr<rewards::Scorer> make_stage_scorer(const RewardSettings& r, int threads) {
  if (r.by_source.empty()) return make_reward_scorer(r, r.spec, threads);
  std::map<std::string, std::unique_ptr<rewards::Scorer>> by;
  for (const auto& [source, spec] : r.by_source) by[source] = make_reward_scorer(r, spec, threads);
  return std::make_unique<SourceScorer>(r.source_field, make_reward_scorer(r, r.spec, threads), std::move(by));
}

SourceScorer::SourceScorer(std::string field, std::unique_ptr<rewards::Scorer> fallback,
                           std::map<std::string, std::unique_ptr<rewards::Scorer>> by_source)
    : field_(std::move(field)), fallback_(std::move(fallback)), by_source_(std::move(by_source)) {}

std::vector<rewards::RewardResult> SourceScorer::score(const std::vector<rewards::RewardItem>& items) {
  std::map<rewards::Scorer*, std::vector<size_t>> groups;
  for (size_t i = 0; i < items.size(); ++i) {
    rewards::Scorer* s = fallback_.get();
    auto it = items[i].metadata.find(field_);
    if (it != items[i].metadata.end()) {
      const std::string source = it->is_string() ? it->get<std::string>() : it->dump();
      if (auto found = by_source_.find(source); found != by_source_.end()) s = found->second.get();
    }
    groups[s].push_back(i);
  }
  std::vector<rewards::RewardResult> out(items.size());
  for (auto& [scorer, index] : groups) {
    std::vector<rewards::RewardItem> part;
    for (size_t i : index) part.push_back(items[i]);
    std::vector<rewards::RewardResult> res = scorer->score(part);
    for (size_t j = 0; j < index.size(); ++j) out[index[j]] = std::move(res[j]);
  }
  return out;
}

}  // namespace grpo::trainer

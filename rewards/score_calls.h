// What a reward worker does with one Score call once it is authorised and has a thread: the
// requested combination must use only the rewards the worker serves (it may weigh them), is built
// once and kept (the most recent 64 combinations), and every item is scored inside a try, so a bad
// item (metadata that is not JSON, a reward that throws) is that item's error and never the call's.
// Torch-free; includes the generated header (build rule 1).
#pragma once

#include <grpcpp/support/status.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "grpo.pb.h"
#include "rewards/reward.h"

namespace grpo::rewards {

class ScoreCalls {
 public:
  // Serves the rewards named in `served_spec` ("math,format:0.2"), which is also the combination of
  // a call that names none. Throws grpo::Error when it does not build.
  // `options` are the per-reward options of every combination ({"code": {"timeout_s": 2}}).
  ScoreCalls(const RewardRegistry& registry, std::string served_spec,
             nlohmann::json options = nlohmann::json::object());

  // PERMISSION_DENIED for a reward not served, INVALID_ARGUMENT for a spec that does not build;
  // otherwise OK with one result per item, in order. Thread-safe.
  grpc::Status score(const grpo::v1::ScoreRequest& req, grpo::v1::ScoreReply* reply);

  // Whether a call with this spec uses a slow reward (Reward::slow); false when the spec does not
  // build (score() then refuses it).
  bool slow(const std::string& spec);

  const std::set<std::string>& served() const { return served_; }
  const std::string& default_spec() const { return default_spec_; }

 private:
  std::string not_served(const std::string& spec) const;  // "" when every reward is served
  std::shared_ptr<const Reward> reward_for(const std::string& spec);

  static constexpr size_t kCacheSize = 64;
  const RewardRegistry& registry_;
  std::string default_spec_;
  nlohmann::json options_;
  std::set<std::string> served_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const Reward>> cache_;
  std::deque<std::string> order_;
};

}  // namespace grpo::rewards

#include "rewards/score_calls.h"

#include "rewards/builtin.h"
#include "util/json.h"
#include "util/strings.h"

namespace grpo::rewards {

namespace pb = grpo::v1;

ScoreCalls::ScoreCalls(const RewardRegistry& registry, std::string served_spec, nlohmann::json options)
    : registry_(registry), default_spec_(std::move(served_spec)), options_(std::move(options)) {
  for (const std::string& part : split_list(default_spec_)) served_.insert(part.substr(0, part.find(':')));
  reward_for(default_spec_);  // fail at start-up on a bad default
}

grpc::Status ScoreCalls::score(const pb::ScoreRequest& req, pb::ScoreReply* reply) {
  const std::string& spec = req.spec().empty() ? default_spec_ : req.spec();
  if (std::string refused = not_served(spec); !refused.empty())
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, refused);
  std::shared_ptr<const Reward> reward;
  try {
    reward = reward_for(spec);
  } catch (const std::exception& e) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
  }
  for (const auto& p : req.items()) {
    RewardItem item;
    item.prompt = p.prompt();
    item.completion = p.completion();
    item.reference = p.reference();
    auto* out = reply->add_results();
    try {
      if (!p.metadata_json().empty()) item.metadata = parse_json(p.metadata_json(), "metadata");
      RewardResult r = reward->score(item);
      out->set_reward(r.reward);
      for (auto& kv : r.components) (*out->mutable_components())[kv.first] = kv.second;
      out->set_error(r.error);
    } catch (const std::exception& e) {
      out->set_reward(0);
      out->set_error(e.what());
    } catch (...) {
      out->set_reward(0);
      out->set_error("unknown error");
    }
  }
  return grpc::Status::OK;
}

bool ScoreCalls::slow(const std::string& spec) {
  if (!not_served(spec.empty() ? default_spec_ : spec).empty()) return false;
  try {
    return reward_for(spec.empty() ? default_spec_ : spec)->slow();
  } catch (const std::exception&) {
    return false;
  }
}

std::string ScoreCalls::not_served(const std::string& spec) const {
  for (const std::string& part : split_list(spec)) {
    std::string name = part.substr(0, part.find(':'));
    if (!served_.count(name)) {
      std::string list;
      for (const auto& s : served_) list += (list.empty() ? "" : ", ") + s;
      return "reward '" + name + "' is not served by this worker (it serves: " + list + ")";
    }
  }
  return "";
}

std::shared_ptr<const Reward> ScoreCalls::reward_for(const std::string& spec) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = cache_.find(spec);
  if (it != cache_.end()) return it->second;
  auto r = std::make_shared<const CombinedReward>(spec, registry_, options_);
  if (cache_.size() >= kCacheSize) {
    cache_.erase(order_.front());
    order_.pop_front();
  }
  cache_[spec] = r;
  order_.push_back(spec);
  return r;
}

}  // namespace grpo::rewards

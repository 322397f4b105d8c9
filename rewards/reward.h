// The reward interface, the registry of rewards by name, and weighted combinations.
//
// A reward scores one completion: score(prompt, completion, reference, metadata) -> a number,
// named components (what a combination or a dashboard shows), or an error for that item. Rewards
// must be thread-safe: workers call score() from many threads at once.
//
// This header is all a plugin needs (rewards/plugin.h): everything here is inline, so a plugin
// built as its own shared object registers into the host's registry through a reference.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace grpo::rewards {

struct RewardItem {
  std::string prompt;
  std::string completion;
  std::string reference;        // "" when the task has none
  nlohmann::json metadata = nlohmann::json::object();
};

struct RewardResult {
  double reward = 0;
  std::map<std::string, double> components;  // by reward name (and sub-name, "format/think")
  std::string error;                         // non-empty: this item could not be scored
};

class Reward {
 public:
  virtual ~Reward() = default;
  // Scores one item. May throw: the caller turns the exception into this item's error.
  virtual RewardResult score(const RewardItem& item) const = 0;
  // True for a reward that may take seconds per item (it runs programs, or calls out): a reward
  // worker scores calls that use one on threads of their own, so fast rewards never queue behind it.
  virtual bool slow() const { return false; }
};

// Builds a reward from its options (a JSON object; {} for the defaults).
using RewardFactory = std::function<std::unique_ptr<Reward>(const nlohmann::json& options)>;

class RewardRegistry {
 public:
  void add(const std::string& name, RewardFactory factory, const std::string& description) {
    std::lock_guard<std::mutex> g(mu_);
    entries_[name] = {std::move(factory), description};
  }
  bool has(const std::string& name) const {
    std::lock_guard<std::mutex> g(mu_);
    return entries_.count(name) > 0;
  }
  // Throws std::invalid_argument naming the reward and the known ones.
  std::unique_ptr<Reward> make(const std::string& name, const nlohmann::json& options = nlohmann::json::object()) const {
    RewardFactory f;
    {
      std::lock_guard<std::mutex> g(mu_);
      auto it = entries_.find(name);
      if (it == entries_.end()) {
        std::string known;
        for (auto& kv : entries_) known += (known.empty() ? "" : ", ") + kv.first;
        throw std::invalid_argument("unknown reward '" + name + "' (known: " + known + ")");
      }
      f = it->second.first;
    }
    return f(options.is_null() ? nlohmann::json::object() : options);
  }
  std::vector<std::pair<std::string, std::string>> list() const {
    std::lock_guard<std::mutex> g(mu_);
    std::vector<std::pair<std::string, std::string>> out;
    for (auto& kv : entries_) out.push_back({kv.first, kv.second.second});
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::pair<RewardFactory, std::string>> entries_;
};

}  // namespace grpo::rewards

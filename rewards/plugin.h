// Custom rewards in C++, loaded at run time: `grpo reward-worker --plugin libfoo.so` (and
// `grpo reward --plugin`). A plugin is a shared object built against this header only:
//
//   #include "rewards/plugin.h"
//   class Keywords : public grpo::rewards::Reward { ... };
//   GRPO_REWARD_PLUGIN(registry) {
//     registry.add("keywords", [](const nlohmann::json& o) { return std::make_unique<Keywords>(o); },
//                  "share of metadata.keywords found in the completion");
//   }
//
// The host calls the plugin's registration function with its own registry. Plugins must be built
// with the same compiler and standard library as grpo (they exchange std::string and
// nlohmann::json); the ABI version below is checked on load.
#pragma once

#include "rewards/reward.h"

#define GRPO_REWARD_PLUGIN_ABI 2

#define GRPO_REWARD_PLUGIN(REGISTRY)                                                                  \
  static void grpo_reward_plugin_body(::grpo::rewards::RewardRegistry& REGISTRY);                     \
  extern "C" __attribute__((visibility("default"))) int grpo_reward_plugin_abi() {                   \
    return GRPO_REWARD_PLUGIN_ABI;                                                                    \
  }                                                                                                   \
  extern "C" __attribute__((visibility("default"))) void grpo_reward_plugin_register(                \
      ::grpo::rewards::RewardRegistry& registry) {                                                    \
    grpo_reward_plugin_body(registry);                                                                \
  }                                                                                                   \
  static void grpo_reward_plugin_body(::grpo::rewards::RewardRegistry& REGISTRY)

namespace grpo::rewards {

// Host side: dlopen()s `path`, checks its ABI version and registers its rewards into `registry`.
// Throws grpo::Error naming the file and what went wrong. The library stays loaded.
void load_reward_plugin(const std::string& path, RewardRegistry& registry);

}  // namespace grpo::rewards

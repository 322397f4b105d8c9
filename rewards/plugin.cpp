#include "rewards/plugin.h"

#include <dlfcn.h>

#include "util/error.h"

namespace grpo::rewards {

void load_reward_plugin(const std::string& path, RewardRegistry& registry) {
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) throw Error("reward plugin " + path + ": cannot load: " + dlerror());
  using AbiFn = int (*)();
  using RegisterFn = void (*)(RewardRegistry&);
  auto abi = reinterpret_cast<AbiFn>(dlsym(h, "grpo_reward_plugin_abi"));
  auto reg = reinterpret_cast<RegisterFn>(dlsym(h, "grpo_reward_plugin_register"));
  if (!abi || !reg)
    throw Error("reward plugin " + path + ": not a grpo reward plugin (no GRPO_REWARD_PLUGIN registration)");
  if (abi() != GRPO_REWARD_PLUGIN_ABI)
    throw Error("reward plugin " + path + ": built for plugin ABI " + std::to_string(abi()) + ", this grpo has " +
                std::to_string(GRPO_REWARD_PLUGIN_ABI));
  try {
    reg(registry);
  } catch (const std::exception& e) {
    throw Error("reward plugin " + path + ": registration failed: " + e.what());
  }
}

}  // namespace grpo::rewards

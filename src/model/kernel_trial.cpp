#include "model/kernel_trial.h"

#include <cstdlib>

namespace grpo::model {

namespace {

// Whether GRPO_KERNEL_TRIAL has the item `prefix` + `kernel` ("-" for one turned off). No
// allocation: this runs once per layer of a decode step.
bool listed(std::string_view prefix, std::string_view kernel) {
  const char* v = std::getenv("GRPO_KERNEL_TRIAL");
  if (!v) return false;
  for (std::string_view list(v);;) {
    const size_t comma = list.find(',');
    const std::string_view item = list.substr(0, comma);
    if (item.size() == prefix.size() + kernel.size() && item.substr(0, prefix.size()) == prefix &&
        item.substr(prefix.size()) == kernel)
      return true;
    if (comma == std::string_view::npos) return false;
    list.remove_prefix(comma + 1);
  }
}

}  // namespace

bool kernel_on_trial(std::string_view kernel) { return listed("", kernel); }

bool kernel_adopted(std::string_view kernel) { return !listed("-", kernel); }

KernelTrialScope::KernelTrialScope(const std::string& names) {
  if (const char* v = std::getenv("GRPO_KERNEL_TRIAL")) previous_ = v;
  ::setenv("GRPO_KERNEL_TRIAL", names.c_str(), 1);
}

KernelTrialScope::~KernelTrialScope() {
  if (previous_)
    ::setenv("GRPO_KERNEL_TRIAL", previous_->c_str(), 1);
  else
    ::unsetenv("GRPO_KERNEL_TRIAL");
}

}  // namespace grpo::model

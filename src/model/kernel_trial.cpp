#include "model/kernel_trial.h"

#include <cstdlib>

namespace grpo::model {

bool kernel_on_trial(std::string_view kernel) {
  const char* v = std::getenv("GRPO_KERNEL_TRIAL");
  if (!v) return false;
  for (std::string_view list(v);;) {  // no allocation: this runs once per layer of a decode step
    const size_t comma = list.find(',');
    if (list.substr(0, comma) == kernel) return true;
    if (comma == std::string_view::npos) return false;
    list.remove_prefix(comma + 1);
  }
}

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

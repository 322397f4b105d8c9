// Device kernel times of a piece of work, through the PyTorch profiler (Kineto/CUPTI): which
// kernels a benchmark's time goes to. Used by bench_rollout --profile.
#pragma once

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace grpo::bench {

struct KernelTime {
  int64_t calls = 0;
  double ms = 0;
};

// Total device time and launch count per kernel name while `work` runs (it should end with a
// device synchronisation so that every kernel is recorded).
inline std::map<std::string, KernelTime> cuda_kernel_times(const std::function<void()>& work) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  work();
  auto result = prof::disableProfiler();
  std::map<std::string, KernelTime> out;
  for (const auto& e : result->events())
    if (e.deviceType() == c10::DeviceType::CUDA) {
      KernelTime& k = out[e.name()];
      ++k.calls;
      k.ms += e.durationNs() / 1e6;
    }
  return out;
}

// `a` minus `b`, kernel by kernel, largest time first.
inline std::vector<std::pair<std::string, KernelTime>> kernel_time_difference(
    const std::map<std::string, KernelTime>& a, const std::map<std::string, KernelTime>& b) {
  std::vector<std::pair<std::string, KernelTime>> out;
  for (const auto& [name, t] : a) {
    KernelTime d = t;
    if (auto it = b.find(name); it != b.end()) {
      d.calls -= it->second.calls;
      d.ms -= it->second.ms;
    }
    out.emplace_back(name, d);
  }
  std::sort(out.begin(), out.end(), [](const auto& x, const auto& y) { return x.second.ms > y.second.ms; });
  return out;
}

// The device time of all kernels of such a list.
inline double total_ms(const std::vector<std::pair<std::string, KernelTime>>& times) {
  double total = 0;
  for (const auto& entry : times) total += entry.second.ms;
  return total;
}

// A kernel's name for a JSON string: its first 90 characters, double quotes made single.
inline std::string json_label(const std::string& name) {
  std::string out = name.substr(0, 90);
  std::replace(out.begin(), out.end(), '"', '\'');
  return out;
}

}  // namespace grpo::bench

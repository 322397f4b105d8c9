// profile_steps: the listed training steps run under the PyTorch profiler (profile/profiler.h),
// phase by phase (a GRPO step: rollout, then update). For step N, each phase writes the Chrome trace
// <dir>/step-N-<phase>.json (chrome://tracing, https://ui.perfetto.dev) and the step writes
// <dir>/step-N.md: per phase its wall time, its device time, and the kernels (CUDA) and operators
// (host self time) that took the most. With several ranks every rank writes its own, named
// step-N-rank-R*. A profiled step's times include the profiler's overhead.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "profile/profiler.h"

namespace grpo::trainer {

class StepProfiler {
 public:
  StepProfiler() = default;
  // `cuda`: the work runs on a GPU (device activity is recorded, and each phase ends with a
  // device synchronisation so that its kernels are in its trace).
  StepProfiler(std::string dir, std::vector<int64_t> steps, bool cuda, int rank, int world_size);

  bool wants(int64_t step) const;
  // Runs `work`: under the profiler when `step` is listed, else as it is.
  void phase(int64_t step, const std::string& name, const std::function<void()>& work);
  // Writes step-N.md from the step's phases and returns its path ("" if the step is not profiled).
  std::string finish(int64_t step);

 private:
  std::string stem(int64_t step) const;  // <dir>/step-N[-rank-R]

  std::string dir_;
  std::vector<int64_t> steps_;
  bool cuda_ = false;
  int rank_ = 0, world_size_ = 1;
  std::vector<std::pair<std::string, profile::Recording>> phases_;  // of the step being profiled
};

}  // namespace grpo::trainer

#include "trainer/step_profile.h"

#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <cstdio>

#include "util/files.h"

namespace grpo::trainer {

namespace {
constexpr size_t kTopRows = 25;  // rows of each table in step-N.md
}

StepProfiler::StepProfiler(std::string dir, std::vector<int64_t> steps, bool cuda, int rank, int world_size)
    : dir_(std::move(dir)), steps_(std::move(steps)), cuda_(cuda), rank_(rank), world_size_(world_size) {}

bool StepProfiler::wants(int64_t step) const { return std::find(steps_.begin(), steps_.end(), step) != steps_.end(); }

std::string StepProfiler::stem(int64_t step) const {
  std::string s = dir_ + "/step-" + std::to_string(step);
  if (world_size_ > 1) s += "-rank-" + std::to_string(rank_);
  return s;
}

void StepProfiler::phase(int64_t step, const std::string& name, const std::function<void()>& work) {
  if (!wants(step)) return work();
  make_directories(dir_);
  profile::Recording r = profile::record(
      [&] {
        work();
        if (cuda_) c10::cuda::device_synchronize();
      },
      cuda_, stem(step) + "-" + name + ".json");
  phases_.emplace_back(name, std::move(r));
}

std::string StepProfiler::finish(int64_t step) {
  if (!wants(step) || phases_.empty()) return "";
  const std::string file = stem(step);
  std::string md = "# Step " + std::to_string(step) + (world_size_ > 1 ? ", rank " + std::to_string(rank_) : "") +
                   ": where the time went\n\nEach phase's timeline is in " + file.substr(file.rfind('/') + 1) +
                   "-<phase>.json (chrome://tracing or https://ui.perfetto.dev). Times include the profiler's "
                   "overhead.\n";
  char line[256];
  for (const auto& [name, r] : phases_) {
    const auto device = profile::difference(r.device), host = profile::difference(r.host);
    const double device_ms = profile::total_ms(device), host_ms = profile::total_ms(host);
    snprintf(line, sizeof line, "\n## %s: %.3f s wall", name.c_str(), r.wall_ms / 1e3);
    md += line;
    if (cuda_) {
      snprintf(line, sizeof line, ", %.3f s of device time (kernels, copies, fills; streams add up)", device_ms / 1e3);
      md += line;
    }
    md += "\n\n";
    if (cuda_) {
      md += "| kernel | calls | ms | share of device time |\n|---|---|---|---|\n";
      md += profile::table_rows(device, kTopRows, device_ms) + "\n";
    }
    md += "| operator (host self time) | calls | ms | share of host time |\n|---|---|---|---|\n";
    md += profile::table_rows(host, kTopRows, host_ms);
  }
  write_file_atomic(file + ".md", md);
  phases_.clear();
  return file + ".md";
}

}  // namespace grpo::trainer

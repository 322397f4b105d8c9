// Where a piece of work's time goes, through the PyTorch profiler (Kineto; CUDA kernels, copies and
// fills through CUPTI): device time per kernel, host self time per operator, and the Chrome trace
// (chrome://tracing, https://ui.perfetto.dev) for the timeline. Used by the trainer's profile_steps
// and by the benchmarks' --profile.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace grpo::profile {

struct OpTime {
  int64_t calls = 0;
  double ms = 0;
};
using OpTimes = std::map<std::string, OpTime>;  // by kernel or operator name

struct Recording {
  OpTimes device;  // CUDA kernels, copies and fills, on every stream and thread: device time
  // Operators called on the recording thread (and the autograd threads serving it): self time, so
  // that an operator's children do not count twice.
  OpTimes host;
  double wall_ms = 0;
};

// Runs `work` under the profiler; with `cuda`, records device activity as well (the work should end
// with a device synchronisation so that every kernel is in). Writes the Chrome trace to
// `trace_path` unless it is empty. Throws grpo::Error if the profiler cannot start (another one is on).
Recording record(const std::function<void()>& work, bool cuda, const std::string& trace_path = "");

// `a` minus `b`, name by name, largest time first.
std::vector<std::pair<std::string, OpTime>> difference(const OpTimes& a, const OpTimes& b = {});
double total_ms(const std::vector<std::pair<std::string, OpTime>>& times);

// The `top` largest as Markdown table rows: | name | calls | ms | share of `total_ms` |. Names are cut
// to 100 characters, '|' escaped.
std::string table_rows(const std::vector<std::pair<std::string, OpTime>>& times, size_t top, double total_ms);

}  // namespace grpo::profile

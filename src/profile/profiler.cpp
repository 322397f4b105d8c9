#include "profile/profiler.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <set>

#include "util/error.h"

namespace grpo::profile {

namespace {

// Host self times: on each thread, events nest by time; an event's self time is its duration less
// that of the events directly inside it.
void add_host_self_times(const std::vector<torch::autograd::profiler::KinetoEvent>& events, OpTimes& out) {
  struct Span {
    uint64_t start, end;
    const std::string* name;
  };
  std::map<uint64_t, std::vector<Span>> by_thread;
  std::vector<std::string> names;
  names.reserve(events.size());
  for (const auto& e : events)
    if (e.deviceType() == c10::DeviceType::CPU && e.endNs() >= e.startNs()) {
      names.push_back(e.name());
      by_thread[e.startThreadId()].push_back({e.startNs(), e.endNs(), &names.back()});
    }
  for (auto& [thread, spans] : by_thread) {
    // Parents before their children: earlier start first, and the longer of two equal starts.
    std::sort(spans.begin(), spans.end(),
              [](const Span& a, const Span& b) { return a.start != b.start ? a.start < b.start : a.end > b.end; });
    std::vector<std::pair<const Span*, uint64_t>> open;  // (span, time of its direct children)
    auto close = [&] {
      const auto [s, children] = open.back();
      open.pop_back();
      const uint64_t d = s->end - s->start;
      OpTime& t = out[*s->name];
      ++t.calls;
      t.ms += (d - std::min(d, children)) / 1e6;
      if (!open.empty()) open.back().second += d;
    };
    for (const Span& s : spans) {
      while (!open.empty() && open.back().first->end <= s.start) close();
      open.emplace_back(&s, 0);
    }
    while (!open.empty()) close();
  }
}

}  // namespace

Recording record(const std::function<void()>& work, bool cuda, const std::string& trace_path) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  if (torch::profiler::impl::profilerEnabled())
    throw Error("profiler: another profiling session is already on in this process");
  // Kineto logs an error for a machine without a GPU when it starts; a host-only recording needs none.
  if (!cuda) setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  std::set<ActivityType> activities{ActivityType::CPU};
  if (cuda) activities.insert(ActivityType::CUDA);
  prof::prepareProfiler(config, activities);
  prof::enableProfiler(config, activities);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    work();
  } catch (...) {
    prof::disableProfiler();
    throw;
  }
  Recording r;
  r.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  auto result = prof::disableProfiler();
  for (const auto& e : result->events())
    if (e.deviceType() == c10::DeviceType::CUDA) {
      OpTime& t = r.device[e.name()];
      ++t.calls;
      t.ms += e.durationNs() / 1e6;
    }
  add_host_self_times(result->events(), r.host);
  if (!trace_path.empty()) result->save(trace_path);
  return r;
}

std::vector<std::pair<std::string, OpTime>> difference(const OpTimes& a, const OpTimes& b) {
  std::vector<std::pair<std::string, OpTime>> out;
  for (const auto& [name, t] : a) {
    OpTime d = t;
    if (auto it = b.find(name); it != b.end()) {
      d.calls -= it->second.calls;
      d.ms -= it->second.ms;
    }
    out.emplace_back(name, d);
  }
  std::sort(out.begin(), out.end(), [](const auto& x, const auto& y) { return x.second.ms > y.second.ms; });
  return out;
}

double total_ms(const std::vector<std::pair<std::string, OpTime>>& times) {
  double total = 0;
  for (const auto& entry : times) total += entry.second.ms;
  return total;
}

std::string table_rows(const std::vector<std::pair<std::string, OpTime>>& times, size_t top, double total) {
  std::string out;
  char num[96];
  for (size_t i = 0; i < times.size() && i < top; ++i) {
    std::string name = times[i].first.substr(0, 100);
    for (size_t p = 0; (p = name.find('|', p)) != std::string::npos; p += 2) name.replace(p, 1, "\\|");
    snprintf(num, sizeof num, " | %lld | %.3f | %.1f%% |\n", (long long)times[i].second.calls, times[i].second.ms,
             total > 0 ? 100 * times[i].second.ms / total : 0.0);
    out += "| " + name + num;
  }
  return out;
}

}  // namespace grpo::profile

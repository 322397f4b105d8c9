// What the benchmarks' --profile prints: kernel times come from profile/profiler.h.
#pragma once

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace grpo::bench {

// A kernel's name for a JSON string: its first 90 characters, double quotes made single.
inline std::string json_label(const std::string& name) {
  std::string out = name.substr(0, 90);
  std::replace(out.begin(), out.end(), '"', '\'');
  return out;
}

}  // namespace grpo::bench

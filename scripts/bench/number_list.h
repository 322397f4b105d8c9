// The benchmarks' comma-separated number options ("1,16,64"): one parser for all of them.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace grpo::bench {

// "1,16,64" -> {1, 16, 64}; std::stoll throws std::invalid_argument on an item that is no number.
inline std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) out.push_back(std::stoll(item));
  return out;
}

}  // namespace grpo::bench

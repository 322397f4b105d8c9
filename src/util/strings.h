// Small string helpers shared by the torch-free parts.
#pragma once

#include <string>
#include <vector>

namespace grpo {

// "a, b,,c " -> {"a", "b", "c"}: split at `sep`, spaces and tabs trimmed, empty parts dropped.
inline std::vector<std::string> split_list(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string::npos) end = s.size();
    std::string part = s.substr(start, end - start);
    part.erase(0, part.find_first_not_of(" \t"));
    part.erase(part.find_last_not_of(" \t") + 1);
    if (!part.empty()) out.push_back(part);
    start = end + 1;
  }
  return out;
}

}  // namespace grpo

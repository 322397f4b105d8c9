// The shared conformance suites (../shared/data/conformance/*.jsonl), one JSON object per case.
#pragma once

#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace grpo::testing {

// The cases of `file`, or nullopt when the shared data is not present.
inline std::optional<std::vector<nlohmann::json>> conformance_cases(const std::string& data_dir, const std::string& file) {
  std::ifstream in(data_dir + "/conformance/" + file);
  if (!in) return std::nullopt;
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

}  // namespace grpo::testing

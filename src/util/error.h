// grpo::Error: the one exception type that crosses part boundaries. Its message names what
// went wrong and where (file, line, tensor, key), so the CLI can print it as one line.
#pragma once

#include <stdexcept>
#include <string>

namespace grpo {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace grpo

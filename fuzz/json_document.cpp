// Fuzz target: JSON from outside (requests, datasets, configs) through parse_json, the nesting check
// included, then back to text.
#include <cstdint>
#include <string>

#include "util/error.h"
#include "util/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto j = grpo::parse_json(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    j.dump();
  } catch (const grpo::Error&) {
  }
  return 0;
}

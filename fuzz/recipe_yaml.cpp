// Fuzz target: a recipe's text through YAML parsing, every key's conversion, the stage list, the
// overrides and the checks (reward specs and their options included). Lines after a line "%%" are
// overrides, one `key=value` per line. Reward plugins are never loaded here: an input naming them
// is skipped (loading a shared object is not parsing).
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/recipe.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  if (text.find("plugin") != std::string::npos) return 0;
  std::vector<std::string> overrides;
  if (size_t cut = text.find("\n%%\n"); cut != std::string::npos) {
    std::string rest = text.substr(cut + 4);
    text.resize(cut);
    size_t start = 0;
    while (start <= rest.size()) {
      size_t end = rest.find('\n', start);
      if (end == std::string::npos) end = rest.size();
      overrides.push_back(rest.substr(start, end - start));
      start = end + 1;
    }
  }
  try {
    grpo::trainer::parse_recipe(text, "fuzz.yaml", overrides);
  } catch (const grpo::Error&) {
  }
  return 0;
}

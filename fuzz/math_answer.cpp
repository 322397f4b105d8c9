// Fuzz target: the math reward's extractor, parser and equivalence on model-written text. The input
// is split at its first NUL into a prediction and a reference; both directions are checked.
#include <cstdint>
#include <string>

#include "rewards/math/checker.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t cut = input.find('\0');
  const std::string a = input.substr(0, cut), b = cut == std::string::npos ? a : input.substr(cut + 1);
  grpo::rewards::extract_math_answer(a);
  grpo::rewards::check_math_answer(a, b);
  grpo::rewards::check_math_answer(b, a);
  grpo::rewards::hendrycks_normalize(a);
  return 0;
}

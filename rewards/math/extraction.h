// Finding the final answer in a text: the last \boxed{} (boxed siblings joined into a list), the
// R1 template's <answer> tags, a final-answer phrase ("the final answer is", "Answer:", "réponse
// est", "答案"), then the last LaTeX environment ($..$, $$..$$, \(..\), \[..\]) or plain number.
// A reference is read differently: usually it is the bare answer ("[2,5)", "\text{Tuesday}") and is
// parsed whole.
#pragma once

#include <string>

#include "rewards/math/checker.h"
#include "rewards/math/expression.h"
#include "rewards/math/scan.h"

namespace grpo::rewards::math {

struct Parsed {
  ExprPtr node;      // nullptr when no answer was found
  std::string text;  // the answer's text
};

// A model's final answer.
Parsed extract_and_parse(const std::string& text, const MathCheckOptions& options, Budget& budget);
// A reference answer: whole when it reads as one answer, else extracted like a model's text.
Parsed parse_reference(const std::string& reference, const MathCheckOptions& options, Budget& budget);
// Multiple choice: the letter a text chooses ("" when none).
std::string choice_letter(const std::string& text);

}  // namespace grpo::rewards::math

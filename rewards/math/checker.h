// Math answer checking: extract the final answer from a model's text, parse it (LaTeX or plain),
// and decide whether it equals a reference answer. The stages, one file each in rewards/math/:
// scan.h (work budget, text scanning), lexer, parser, expression.h, evaluate, equivalence,
// extraction, hendrycks; this header is the whole public interface.
//
// Extraction looks, in order, for the last \boxed{} (with \boxed siblings joined into a list), a
// final-answer phrase ("the final answer is", "Answer:", "réponse est", "答案"), then the last
// LaTeX environment ($..$, $$..$$, \(..\), \[..\]) or plain number. Parsing normalises LaTeX
// (\frac/\dfrac/\tfrac, \left/\right, \text{} units, ^\circ, \%, thousands separators, \! spacing,
// \frac12, \sqrt3) into an expression tree. Equivalence: exact rationals, floats within a relative
// tolerance of 10^-precision, symbolic expressions compared at several points, tuples in order, sets
// without order, intervals with their ends, unions, ± as a pair of values, matrices, equations up
// to sides and scale, inequalities up to direction, `x = value` against a value, and plain text.
//
// Every call is bounded: inputs are cut to `max_chars`, parsing and evaluation count their work
// and give up (as "not equal") past a budget, so no input can hang a reward worker.
#pragma once

#include <optional>
#include <string>

namespace grpo::rewards {

struct MathCheckOptions {
  bool latex = true;         // look for LaTeX answers (\boxed, $..$, ...)
  bool expr = true;          // look for plain-text numbers and expressions
  bool letters = false;      // multiple choice: compare the chosen letter (A, B, C, ...)
  int precision = 6;         // numbers agree to 10^-precision (relative, floor 10^-precision)
  bool strict = true;        // different free symbols make expressions different
  bool hendrycks = false;    // the MATH benchmark's rule: equal strings after its normalisation
  size_t max_chars = 20000;  // text beyond this (from the end) is not searched
};

struct MathVerdict {
  bool correct = false;
  std::string extracted;  // the answer found in the prediction ("" when none)
  std::string reference;  // the answer found in the reference
  std::string note;       // why not correct, when known ("no answer found", "budget exceeded")
};

// Checks `prediction` (a model's whole output or an extracted answer) against `reference`.
MathVerdict check_math_answer(const std::string& prediction, const std::string& reference,
                              const MathCheckOptions& options = {});

// The extracted final answer of a text ("" when none), as check_math_answer sees it.
std::string extract_math_answer(const std::string& text, const MathCheckOptions& options = {});

// The MATH benchmark's string normalisation (hendrycks/math `_strip_string`).
std::string hendrycks_normalize(const std::string& answer);

}  // namespace grpo::rewards

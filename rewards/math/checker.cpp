#include "rewards/math/checker.h"

#include "rewards/math/equivalence.h"
#include "rewards/math/extraction.h"
#include "rewards/math/scan.h"

namespace grpo::rewards {

using namespace math;

std::string extract_math_answer(const std::string& text, const MathCheckOptions& o) {
  Budget b;
  try {
    return extract_and_parse(text, o, b).text;
  } catch (const BudgetExceeded&) {
    return "";
  }
}

MathVerdict check_math_answer(const std::string& prediction, const std::string& reference, const MathCheckOptions& o) {
  MathVerdict v;
  if (o.hendrycks) {
    v.extracted = hendrycks_normalize(prediction);
    v.reference = hendrycks_normalize(reference);
    v.correct = v.extracted == v.reference;
    return v;
  }
  if (o.letters) {
    v.extracted = choice_letter(prediction);
    v.reference = choice_letter(reference);
    v.correct = !v.extracted.empty() && v.extracted == v.reference;
    if (v.extracted.empty()) v.note = "no choice found";
    return v;
  }
  Budget b;
  try {
    Parsed gold = parse_reference(reference, o, b);
    Parsed pred = extract_and_parse(prediction, o, b);
    v.extracted = pred.text;
    v.reference = gold.text;
    if (!gold.node) {
      v.note = "no answer found in the reference";
      return v;
    }
    if (!pred.node) {
      v.note = "no answer found";
      return v;
    }
    v.correct = equivalent(pred.node, gold.node, o, b);
  } catch (const BudgetExceeded&) {
    v.correct = false;
    v.note = "budget exceeded";
  }
  return v;
}

}  // namespace grpo::rewards

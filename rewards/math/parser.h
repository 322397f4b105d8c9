// LaTeX / plain-text answers parsed into expressions: \frac, \sqrt, powers, implicit products,
// functions, |abs|, \lfloor/\lceil, ±, tuples, sets, intervals, unions, matrices, relations, units
// and percent dropped.
#pragma once

#include <string>

#include "rewards/math/expression.h"
#include "rewards/math/scan.h"

namespace grpo::rewards::math {

struct ParseError {};  // not an answer this parser reads

// What never carries meaning removed (\left, \displaystyle, $, \! ...), before lexing.
std::string prepare(std::string text);
// One answer; nullptr when the text is empty. Throws ParseError when it is not one answer.
ExprPtr parse_answer(const std::string& text, bool comma_decimal, Budget& budget);
// The same, with "A \cup B \cup ..." at the top read as a union (a set of its pieces).
ExprPtr parse_with_unions(const std::string& text, bool comma_decimal, Budget& budget);
// Unit words dropped after numbers ("cm", "dollars", "degrees", ...).
bool is_unit_word(const std::string& lower_case_word);

}  // namespace grpo::rewards::math

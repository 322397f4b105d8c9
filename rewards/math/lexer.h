// Tokens of LaTeX / plain-text math: numbers (with thousands groups and decimal commas when asked),
// identifiers, commands, operators, brackets, separators, relations, \text{} runs.
#pragma once

#include <string>
#include <vector>

#include "rewards/math/scan.h"

namespace grpo::rewards::math {

enum class TokenKind { Number, Identifier, Command, Operator, Open, Close, Comma, Semicolon, Relation, Text, End };
struct Token {
  TokenKind t;
  std::string s;  // text: digits, identifier, command name (without '\'), operator
};

// The tokens of `text`, ending with TokenKind::End. Throws std::runtime_error on unbalanced braces
// and BudgetExceeded past the budget.
std::vector<Token> lex(const std::string& text, bool comma_decimal, Budget& budget);

}  // namespace grpo::rewards::math

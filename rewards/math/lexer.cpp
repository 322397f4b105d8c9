#include "rewards/math/lexer.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <complex>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace grpo::rewards::math {

namespace {

struct Lexer {
  const std::string& s;
  bool comma_decimal;
  Budget& budget;
  std::vector<Token> out;

  void number(size_t& i) {
    size_t j = i;
    // Clock times and ratios written like them (12:00, 7:32) compare as written.
    {
      size_t k = i;
      while (k < s.size() && is_digit(s[k])) ++k;
      if (k - i <= 2 && k + 2 < s.size() && s[k] == ':' && is_digit(s[k + 1]) && is_digit(s[k + 2]) &&
          (k + 3 == s.size() || !is_digit(s[k + 3]))) {
        out.push_back({TokenKind::Text, s.substr(i, k + 3 - i)});
        i = k + 3;
        return;
      }
    }
    std::string digits;
    while (j < s.size() && is_digit(s[j])) digits += s[j++];
    // Thousands: ",ddd" groups (also "{,}ddd" and "\!"-spaced, already removed) not followed by a digit.
    auto group_at = [&](size_t k, size_t sep) {
      return k + sep + 3 <= s.size() && is_digit(s[k + sep]) && is_digit(s[k + sep + 1]) && is_digit(s[k + sep + 2]) &&
             (k + sep + 3 == s.size() || !is_digit(s[k + sep + 3]));
    };
    bool lead_zero = digits == "0";
    if (!lead_zero && digits.size() <= 3) {
      size_t k = j;
      std::string grouped = digits;
      int groups = 0;
      while (k < s.size() && s[k] == ',' && group_at(k, 1)) {
        grouped += s.substr(k + 1, 3);
        k += 4;
        ++groups;
      }
      // "1 000": a space-separated group only when the whole run is groups of three.
      if (groups == 0) {
        while (k < s.size() && s[k] == ' ' && group_at(k, 1)) {
          grouped += s.substr(k + 1, 3);
          k += 4;
          ++groups;
        }
      }
      if (groups > 0) {
        digits = grouped;
        j = k;
      }
    }
    std::string frac;
    if (j + 1 < s.size() && (s[j] == '.' || (comma_decimal && s[j] == ',')) && is_digit(s[j + 1])) {
      ++j;
      while (j < s.size() && is_digit(s[j])) frac += s[j++];
    }
    out.push_back({TokenKind::Number, frac.empty() ? digits : digits + "." + frac});
    i = j;
  }

  void run() {
    size_t i = 0;
    while (i < s.size()) {
      budget.tick();
      char c = s[i];
      if (is_space(c)) { ++i; continue; }
      if (is_digit(c) || (c == '.' && i + 1 < s.size() && is_digit(s[i + 1]))) {
        if (c == '.') {
          size_t j = i + 1;
          std::string frac;
          while (j < s.size() && is_digit(s[j])) frac += s[j++];
          out.push_back({TokenKind::Number, "0." + frac});
          i = j;
        } else {
          number(i);
        }
        continue;
      }
      if (is_alpha(c)) {
        size_t j = i;
        while (j < s.size() && is_alpha(s[j])) ++j;
        out.push_back({TokenKind::Identifier, s.substr(i, j - i)});
        i = j;
        continue;
      }
      if (c == '\\') {
        if (i + 1 < s.size() && !is_alpha(s[i + 1])) {
          char d = s[i + 1];
          i += 2;
          if (d == '{') out.push_back({TokenKind::Open, "\\{"});
          else if (d == '}') out.push_back({TokenKind::Close, "\\}"});
          else if (d == '\\') out.push_back({TokenKind::Semicolon, "\\\\"});  // matrix row break
          else if (d == '%') out.push_back({TokenKind::Operator, "%"});
          // spacing (\, \! \; \: \ ) and \$ vanish
          continue;
        }
        size_t j = i + 1;
        while (j < s.size() && is_alpha(s[j])) ++j;
        std::string cmd = s.substr(i + 1, j - i - 1);
        i = j;
        const bool math_font = cmd == "mathrm" || cmd == "mathbf" || cmd == "mathit" || cmd == "operatorname";
        if (math_font || cmd == "text" || cmd == "textbf" || cmd == "mbox" || cmd == "textnormal" || cmd == "textit" ||
            cmd == "textrm") {
          while (i < s.size() && is_space(s[i])) ++i;
          if (i < s.size() && s[i] == '{') {
            size_t e = close_brace(s, i);
            if (e == std::string::npos) throw std::runtime_error("unbalanced braces");
            std::string inner = trim(s.substr(i + 1, e - i - 1));
            i = e + 1;
            bool letters = !inner.empty() && std::all_of(inner.begin(), inner.end(), is_alpha);
            if (math_font && letters) out.push_back({TokenKind::Identifier, inner});
            else if (math_font || std::none_of(inner.begin(), inner.end(), is_alpha)) {  // \text{2}: a number
              Lexer sub{inner, comma_decimal, budget, {}};
              sub.run();
              sub.out.pop_back();
              out.insert(out.end(), sub.out.begin(), sub.out.end());
            } else {
              out.push_back({TokenKind::Text, inner});
            }
          }
          continue;
        }
        if (cmd.rfind("qquad", 0) == 0 || cmd.rfind("quad", 0) == 0) {  // "\quadx": spacing glued to a name
          std::string rest = cmd.substr(cmd[0] == 'q' && cmd[1] == 'q' ? 5 : 4);
          if (!rest.empty()) out.push_back({TokenKind::Identifier, rest});
          continue;
        }
        out.push_back({TokenKind::Command, cmd});
        continue;
      }
      if (c == '(' || c == '[' || c == '{') { out.push_back({TokenKind::Open, std::string(1, c)}); ++i; continue; }
      if (c == ')' || c == ']' || c == '}') { out.push_back({TokenKind::Close, std::string(1, c)}); ++i; continue; }
      if (c == ',') { out.push_back({TokenKind::Comma, ","}); ++i; continue; }
      if (c == ';') { out.push_back({TokenKind::Semicolon, ";"}); ++i; continue; }
      if (c == '<' || c == '>' || c == '=' || c == '!') {
        if (c == '!' && !(i + 1 < s.size() && s[i + 1] == '=')) { out.push_back({TokenKind::Operator, "!"}); ++i; continue; }
        std::string op(1, c);
        if (i + 1 < s.size() && s[i + 1] == '=') { op += '='; ++i; }
        ++i;
        if (op == "==") op = "=";
        out.push_back({TokenKind::Relation, op});
        continue;
      }
      if (std::strchr("+-*/^_|&:%'", c)) { out.push_back({TokenKind::Operator, std::string(1, c)}); ++i; continue; }
      // Unicode we know, as UTF-8.
      if (at(s, i, "²")) { out.push_back({TokenKind::Operator, "^"}); out.push_back({TokenKind::Number, "2"}); i += 2; continue; }
      if (at(s, i, "³")) { out.push_back({TokenKind::Operator, "^"}); out.push_back({TokenKind::Number, "3"}); i += 2; continue; }
      if (at(s, i, "°")) { i += 2; continue; }
      if (at(s, i, "π")) { out.push_back({TokenKind::Command, "pi"}); i += 2; continue; }
      if (at(s, i, "√")) { out.push_back({TokenKind::Command, "sqrt"}); i += 3; continue; }
      if (at(s, i, "≤")) { out.push_back({TokenKind::Relation, "<="}); i += 3; continue; }
      if (at(s, i, "≥")) { out.push_back({TokenKind::Relation, ">="}); i += 3; continue; }
      if (at(s, i, "≠")) { out.push_back({TokenKind::Relation, "!="}); i += 3; continue; }
      if (at(s, i, "±")) { out.push_back({TokenKind::Command, "pm"}); i += 2; continue; }
      if (at(s, i, "∞")) { out.push_back({TokenKind::Command, "infty"}); i += 3; continue; }
      if (at(s, i, "€")) { i += 3; continue; }
      throw std::runtime_error("unexpected character");
    }
    out.push_back({TokenKind::End, ""});
  }
};

}  // namespace

std::vector<Token> lex(const std::string& text, bool comma_decimal, Budget& budget) {
  Lexer lexer{text, comma_decimal, budget, {}};
  lexer.run();
  return std::move(lexer.out);
}

}  // namespace grpo::rewards::math

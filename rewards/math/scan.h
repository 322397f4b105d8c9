// The math checker's ground: a work budget every stage counts against (so no input can hang a
// reward worker), and character-level scanning of LaTeX text.
#pragma once

#include <cstring>
#include <string>

namespace grpo::rewards::math {

// Work budget: every parse and comparison counts steps and stops past the limit.
struct BudgetExceeded {};  // thrown when the budget runs out: the answer counts as not equal
struct Budget {
  long steps = 0, limit = 400000;
  void tick(long n = 1) {
    steps += n;
    if (steps > limit) throw BudgetExceeded{};
  }
};

inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
inline bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
inline std::string lower(std::string s) {
  for (auto& c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}
inline std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}
inline bool at(const std::string& s, size_t i, const char* lit) { return s.compare(i, std::strlen(lit), lit) == 0; }
// Index of the brace closing the one at `open`, or npos.
inline size_t close_brace(const std::string& s, size_t open, char o = '{', char c = '}') {
  int depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == o || s[i + 1] == c)) {
      ++i;
      continue;
    }
    if (s[i] == o) ++depth;
    if (s[i] == c && --depth == 0) return i;
  }
  return std::string::npos;
}

}  // namespace grpo::rewards::math

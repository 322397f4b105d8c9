#include "rewards/math/extraction.h"

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

#include "rewards/math/parser.h"

namespace grpo::rewards::math {

namespace {

// ---------------------------------------------------------------------------------------------
// Extraction.
struct Boxed {
  size_t start, end;  // of the whole \boxed{...}
  std::string inner;
};

std::vector<Boxed> find_boxed(const std::string& s) {
  std::vector<Boxed> out;
  size_t p = 0;
  while (true) {
    size_t a = s.find("\\boxed", p), f = s.find("\\fbox", p);
    size_t q = std::min(a, f);
    if (q == std::string::npos) break;
    size_t i = q + (q == a ? 6 : 5);
    while (i < s.size() && is_space(s[i])) ++i;
    if (i < s.size() && s[i] == '{') {
      size_t e = close_brace(s, i);
      if (e == std::string::npos) {
        // unclosed: take the rest
        out.push_back({q, s.size(), s.substr(i + 1)});
        break;
      }
      out.push_back({q, e + 1, s.substr(i + 1, e - i - 1)});
      p = e + 1;
    } else {
      p = i;
    }
  }
  return out;
}

// Text between two boxed answers that still joins them into one list: separators and a few words.
bool joinable_gap(const std::string& gap) {
  if (gap.size() > 60 || gap.find('\n') != std::string::npos) return false;
  std::string g = gap;
  for (const char* w : {"\\text", "\\quad", "\\qquad", "\\(", "\\)", "\\[", "\\]", "\\,", "\\ "}) {
    size_t p;
    while ((p = g.find(w)) != std::string::npos) g.replace(p, std::strlen(w), " ");
  }
  int words = 0;
  bool in_word = false;
  for (char c : g) {
    if (is_alpha(c)) {
      if (!in_word) ++words;
      in_word = true;
    } else {
      in_word = false;
    }
  }
  return words <= 4;
}

struct Candidate {
  size_t pos;
  std::string text;
  bool comma_decimal;
  int rank = 1;  // among equal positions, higher is tried first (0: a number inside an environment)
};

// LaTeX environments: $$..$$, \[..\], \(..\), $..$ (single-line). Neighbouring environments
// separated only by commas, "and" or "or" ("$1$ and $2$") form one list. `spans` receives where
// they are, so that plain-number search skips their insides.
bool separator_gap(const std::string& g) {
  std::string l = lower(g);
  for (const char* w : {"and", "or"}) {
    size_t p;
    while ((p = l.find(w)) != std::string::npos) l.replace(p, std::strlen(w), " ");
  }
  return std::all_of(l.begin(), l.end(), [](char c) { return is_space(c) || c == ','; });
}

void latex_envs(const std::string& s, size_t base, std::vector<Candidate>& out,
                std::vector<std::pair<size_t, size_t>>& spans) {
  size_t i = 0;
  std::vector<std::pair<size_t, size_t>> local;  // (start, end) of each environment
  std::vector<std::string> inners;
  auto add = [&](size_t a, size_t e, std::string inner) {
    if (!local.empty() && separator_gap(s.substr(local.back().second, a - local.back().second))) {
      inners.back() += " , " + inner;
      local.back().second = e;
      return;
    }
    local.push_back({a, e});
    inners.push_back(std::move(inner));
  };
  while (i < s.size()) {
    if (at(s, i, "$$")) {
      size_t e = s.find("$$", i + 2);
      if (e == std::string::npos) break;
      add(i, e + 2, s.substr(i + 2, e - i - 2));
      i = e + 2;
    } else if (at(s, i, "\\[")) {
      size_t e = s.find("\\]", i + 2);
      if (e == std::string::npos) break;
      add(i, e + 2, s.substr(i + 2, e - i - 2));
      i = e + 2;
    } else if (at(s, i, "\\(")) {
      size_t e = s.find("\\)", i + 2);
      if (e == std::string::npos) break;
      std::string inner = s.substr(i + 2, e - i - 2);
      if (inner.find('\n') == std::string::npos) add(i, e + 2, inner);
      i = e + 2;
    } else if (s[i] == '$' && (i == 0 || s[i - 1] != '\\')) {
      size_t e = i + 1;
      while (e < s.size() && !(s[e] == '$' && s[e - 1] != '\\')) ++e;
      if (e >= s.size()) break;
      std::string inner = s.substr(i + 1, e - i - 1);
      if (inner.find('\n') == std::string::npos) add(i, e + 1, inner);
      i = e + 1;
    } else {
      ++i;
    }
  }
  for (size_t k = 0; k < local.size(); ++k) {
    out.push_back({base + local[k].first, inners[k], false});
    spans.push_back({base + local[k].first, base + local[k].second});
  }
}

// Plain numbers in text (expr mode): 1,000.99  2,74  -5  13/28  25%; also bare \frac{a}{b}.
void plain_numbers(const std::string& s, size_t base, std::vector<Candidate>& out,
                   const std::vector<std::pair<size_t, size_t>>& spans) {
  size_t i = 0;
  size_t span = 0;
  while (i < s.size()) {
    while (span < spans.size() && spans[span].second <= base + i) ++span;
    // Inside a LaTeX environment a number is a fallback for when the environment does not parse:
    // it sorts at the environment's start, so it is tried after it.
    const bool inside = span < spans.size() && spans[span].first <= base + i;
    if (at(s, i, "\\frac") || at(s, i, "\\dfrac") || at(s, i, "\\tfrac")) {
      size_t j = s.find('{', i);
      if (j != std::string::npos && j < i + 7) {
        size_t e1 = close_brace(s, j);
        if (e1 != std::string::npos && e1 + 1 < s.size() && s[e1 + 1] == '{') {
          size_t e2 = close_brace(s, e1 + 1);
          if (e2 != std::string::npos) {
            const bool inside = span < spans.size() && spans[span].first <= base + i;
            out.push_back({inside ? spans[span].first : base + i, s.substr(i, e2 + 1 - i), false, inside ? 0 : 1});
            i = e2 + 1;
            continue;
          }
        }
      }
    }
    bool starts = is_digit(s[i]) || (s[i] == '.' && i + 1 < s.size() && is_digit(s[i + 1]));
    if (starts && (i == 0 || (!is_alpha(s[i - 1]) && !is_digit(s[i - 1]) && s[i - 1] != '_' && s[i - 1] != '.'))) {
      size_t j = i;
      while (j < s.size() && (is_digit(s[j]) || ((s[j] == ',' || s[j] == '.') && j + 1 < s.size() && is_digit(s[j + 1]))))
        ++j;
      // a/b
      size_t k = j;
      while (k < s.size() && s[k] == ' ') ++k;
      if (k < s.size() && s[k] == '/') {
        size_t m = k + 1;
        while (m < s.size() && s[m] == ' ') ++m;
        if (m < s.size() && is_digit(s[m])) {
          while (m < s.size() && is_digit(s[m])) ++m;
          j = m;
        }
      }
      // An arithmetic chain "35 + 70 = 105" is one candidate.
      while (true) {
        size_t m = j;
        while (m < s.size() && s[m] == ' ') ++m;
        if (m >= s.size() || !std::strchr("+-*/=x", s[m]) || (s[m] == 'x' && (m + 1 >= s.size() || s[m + 1] != ' '))) break;
        size_t n = m + 1;
        while (n < s.size() && s[n] == ' ') ++n;
        if (n >= s.size() || !is_digit(s[n])) break;
        while (n < s.size() && (is_digit(s[n]) || ((s[n] == ',' || s[n] == '.') && n + 1 < s.size() && is_digit(s[n + 1]))))
          ++n;
        j = n;
      }
      if (!(j < s.size() && is_digit(s[j]))) {
        size_t from = i;
        if (from > 0 && s[from - 1] == '-') --from;
        std::string cand = s.substr(from, j - from);
        for (auto& ch : cand)
          if (ch == 'x') ch = '*';
        out.push_back({inside ? spans[span].first : base + from, cand, true, inside ? 0 : 1});
      }
      i = j;
      continue;
    }
    ++i;
  }
}

// The start of the text after the last final-answer phrase, or npos.
size_t answer_phrase(const std::string& s) {
  std::string l = lower(s);
  size_t best = std::string::npos;
  for (const char* ph : {"final answer is", "final answer:", "the answer is", "answer is", "answer:", "réponse est",
                         "réponse :", "réponse:", "答案是", "答案：", "答案:"}) {
    size_t p = l.rfind(ph);
    if (p != std::string::npos) {
      size_t e = p + std::strlen(ph);
      if (best == std::string::npos || e > best) best = e;
    }
  }
  return best;
}

// Words of three or more letters that are not commands, units or percent words: prose, not math.
bool looks_like_prose(const std::string& t) {
  static const std::set<std::string> ok = {"percent", "percentage", "pct", "and", "sqrt", "frac", "pi", "sin", "cos",
                                           "tan", "log", "ln", "exp", "infty", "cdot", "times", "pm", "text", "left",
                                           "right", "dfrac", "tfrac", "boxed", "circ", "quad"};
  for (size_t k = 0; k < t.size();) {
    if ((unsigned char)t[k] >= 0x80) return true;
    if (!is_alpha(t[k])) {
      ++k;
      continue;
    }
    size_t e = k;
    while (e < t.size() && is_alpha(t[e])) ++e;
    std::string w = lower(t.substr(k, e - k));
    bool command = k > 0 && t[k - 1] == '\\';
    if (!command && w.size() >= 3 && !ok.count(w) && !is_unit_word(w)) return true;
    k = e;
  }
  return false;
}

// Whether `t` has a '$' that is not an escaped dollar sign (\$32).
bool has_math_dollar(const std::string& t) {
  for (size_t p = t.find('$'); p != std::string::npos; p = t.find('$', p + 1))
    if (p == 0 || t[p - 1] != '\\') return true;
  return false;
}

// `text` without one pair of math delimiters around all of it ($..$, $$..$$, \(..\), \[..\]).
std::string strip_math_delimiters(const std::string& text) {
  std::string t = trim(text);
  for (auto [open, close] : {std::pair<const char*, const char*>{"$$", "$$"}, {"$", "$"}, {"\\(", "\\)"}, {"\\[", "\\]"}}) {
    size_t a = std::strlen(open), c = std::strlen(close);
    if (t.size() >= a + c && at(t, 0, open) && t.compare(t.size() - c, c, close) == 0) {
      std::string inner = t.substr(a, t.size() - a - c);
      if (!has_math_dollar(inner)) return trim(inner);
    }
  }
  return t;
}

// `text` with the insides of \text{..}-like groups blanked (their words are names, not prose).
std::string without_text_groups(std::string t) {
  for (const char* cmd : {"\\text{", "\\textbf{", "\\mathrm{", "\\mbox{", "\\textit{", "\\operatorname{", "\\begin{", "\\end{"}) {
    for (size_t p = t.find(cmd); p != std::string::npos; p = t.find(cmd, p + 1)) {
      size_t open = p + std::strlen(cmd) - 1, e = close_brace(t, open);
      if (e == std::string::npos) break;
      std::fill(t.begin() + open + 1, t.begin() + e, ' ');
    }
  }
  return t;
}

// `text` as one whole answer when it reads as one: short, no \boxed, no '$' inside, not prose.
std::optional<std::string> whole_answer(const std::string& text) {
  std::string whole = strip_math_delimiters(text);
  if (whole.empty() || whole.size() > 2000 || whole.find("\\boxed") != std::string::npos || has_math_dollar(whole) ||
      looks_like_prose(without_text_groups(whole)))
    return std::nullopt;
  return whole;
}

std::vector<Candidate> candidates(const std::string& text, const MathCheckOptions& o) {
  std::vector<Candidate> out;  // tried from the back
  std::string s = text.size() > o.max_chars ? text.substr(text.size() - o.max_chars) : text;
  // Whole short strings first-class: "-5", "7,425,000", "28 percent", "\frac{10}{9}".
  std::string ts = trim(s);
  std::vector<Candidate> rest;
  if (o.expr && !ts.empty() && ts.size() <= 60 && ts.find('$') == std::string::npos &&
      ts.find("\\boxed") == std::string::npos && !looks_like_prose(ts))
    rest.push_back({0, ts, true});
  std::vector<std::pair<size_t, size_t>> spans;
  std::vector<Candidate> unused;
  latex_envs(s, 0, o.latex ? rest : unused, spans);
  if (o.expr) plain_numbers(s, 0, rest, spans);
  std::stable_sort(rest.begin(), rest.end(), [](const Candidate& a, const Candidate& b) {
    return a.pos != b.pos ? a.pos < b.pos : a.rank < b.rank;
  });
  // The whole string goes last (tried first) when it is short.
  if (!rest.empty() && rest.front().pos == 0 && rest.front().text == ts && ts.size() <= 60 && o.expr) {
    Candidate whole = rest.front();
    rest.erase(rest.begin());
    rest.push_back(whole);
  }
  out = rest;
  // A final-answer phrase: its first candidate with a digit (else its first) outranks the rest.
  size_t ph = answer_phrase(s);
  if (ph != std::string::npos) {
    std::vector<Candidate> seg;
    for (auto& c : rest)
      if (c.pos >= ph) seg.push_back(c);
    const Candidate* pick = nullptr;
    for (int rank : {1, 0})
      for (auto& c : seg)
        if (!pick && c.rank == rank && std::any_of(c.text.begin(), c.text.end(), is_digit)) pick = &c;
    if (!pick && !seg.empty()) pick = &seg.front();
    if (pick) out.push_back(*pick);
    // "The answer is \frac{1}{2}.": the rest of the line, whole, when it reads as one answer.
    size_t eol = s.find('\n', ph);
    std::string rest_of_line = trim(s.substr(ph, eol == std::string::npos ? std::string::npos : eol - ph));
    while (!rest_of_line.empty() && (rest_of_line.back() == '.' || is_space(rest_of_line.back()))) rest_of_line.pop_back();
    if (o.latex)
      if (auto whole = whole_answer(rest_of_line)) out.push_back({ph, *whole, false});
  }
  // <answer>..</answer> (the R1 template): the last tag's content is the answer, whole.
  if (size_t tag = s.rfind("<answer>"); tag != std::string::npos && o.latex) {
    size_t close = s.find("</answer>", tag);
    std::string inner = s.substr(tag + 8, close == std::string::npos ? std::string::npos : close - tag - 8);
    if (auto whole = whole_answer(inner)) out.push_back({tag, *whole, false});
  }
  // \boxed outranks everything; boxed siblings separated by little text form one list.
  if (o.latex) {
    auto boxed = find_boxed(s);
    if (!boxed.empty()) {
      size_t k = boxed.size() - 1;
      std::string joined = boxed[k].inner;
      while (k > 0 && joinable_gap(s.substr(boxed[k - 1].end, boxed[k].start - boxed[k - 1].end))) {
        --k;
        joined = boxed[k].inner + " , " + joined;
      }
      out.push_back({boxed.back().start, joined, false});
    }
  }
  return out;
}

// Parses one candidate answer; nullptr when it is not one.
ExprPtr try_parse(const std::string& text, bool comma_decimal, Budget& b) {
  try {
    return parse_with_unions(text, comma_decimal, b);
  } catch (const ParseError&) {
  } catch (const std::invalid_argument&) {
  } catch (const std::out_of_range&) {
  } catch (const std::runtime_error&) {
  }
  return nullptr;
}

}  // namespace

std::string choice_letter(const std::string& text) {
  auto standalone = [&](size_t i) {
    char c = text[i];
    if (c < 'A' || c > 'Z') return false;
    bool left = i == 0 || !is_alpha(text[i - 1]);
    bool right = i + 1 >= text.size() || !is_alpha(text[i + 1]);
    return left && right;
  };
  size_t ph = answer_phrase(text);
  if (ph != std::string::npos)
    for (size_t i = ph; i < text.size(); ++i)
      if (standalone(i)) return std::string(1, text[i]);
  std::string t = trim(text);
  size_t off = text.find(t);
  for (size_t i = off; i < text.size() && i < off + 3; ++i) {
    if (text[i] == '(') continue;
    if (standalone(i)) return std::string(1, text[i]);
    break;
  }
  // Gold like "Alina and the answer is\n(C) Cecile" is handled above; otherwise the last
  // standalone capital ("... therefore I think it's B").
  for (size_t i = text.size(); i-- > 0;)
    if (standalone(i) && text[i] <= 'E') return std::string(1, text[i]);
  return "";
}

Parsed extract_and_parse(const std::string& text, const MathCheckOptions& o, Budget& b) {
  auto cands = candidates(text, o);
  for (size_t k = cands.size(); k-- > 0;)
    if (ExprPtr n = try_parse(cands[k].text, cands[k].comma_decimal, b)) return {n, trim(cands[k].text)};
  return {nullptr, ""};
}

// A reference is usually the answer itself, written bare as MATH-500's `answer` column and most
// datasets' answer columns write it: "[2,5)", "\text{Tuesday}", "\{3,1,2\}", a pmatrix. Searching
// it like a model's text would find the plain number 5 in "[2,5)" (or read "2,5" as a decimal
// comma), so a short reference that is not prose is parsed whole first. A worked solution (with a
// \boxed{}, or prose) goes through extraction like a prediction.
Parsed parse_reference(const std::string& reference, const MathCheckOptions& o, Budget& b) {
  if (auto whole = whole_answer(reference); whole && o.latex)
    if (ExprPtr n = try_parse(*whole, false, b)) return {n, *whole};
  return extract_and_parse(reference, o, b);
}

}  // namespace grpo::rewards::math

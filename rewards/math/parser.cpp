#include "rewards/math/parser.h"

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

#include "rewards/math/lexer.h"

namespace grpo::rewards::math {

namespace {

// ---------------------------------------------------------------------------------------------
// Parser.
const std::set<std::string> kFuncs = {"sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan",
                                      "sinh", "cosh", "tanh", "ln", "log", "exp", "lg"};
const std::set<std::string> kGreek = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta",
                                      "theta", "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho",
                                      "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma",
                                      "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega"};
const std::set<std::string> kUnitWords = {"cm", "mm", "km", "m", "kg", "g", "mg", "s", "sec", "min", "h", "hr", "hrs",
                                          "hours", "hour", "minutes", "seconds", "days", "day", "units", "unit",
                                          "meters", "meter", "miles", "mile", "feet", "foot", "ft", "inches", "inch",
                                          "yuan", "dollars", "dollar", "cents", "degrees", "degree", "liters", "l",
                                          "square", "sq", "cubic", "points", "pounds", "lbs", "mph", "years", "year"};

struct Parser {
  std::vector<Token> t;
  size_t i = 0;
  Budget& budget;
  int depth = 0;
  int abs_depth = 0;  // inside |...|: a bar closes rather than opens

  const Token& peek(size_t k = 0) const { return t[std::min(i + k, t.size() - 1)]; }
  bool is(TokenKind tt, const char* s = nullptr, size_t k = 0) const {
    return peek(k).t == tt && (!s || peek(k).s == s);
  }
  Token take() { return t[std::min(i++, t.size() - 1)]; }
  void expect(TokenKind tt, const char* s) {
    if (!is(tt, s)) throw ParseError{};
    ++i;
  }
  struct Depth {
    Parser& p;
    explicit Depth(Parser& p_) : p(p_) {
      if (++p.depth > 200) throw ParseError{};
      p.budget.tick();
    }
    ~Depth() { --p.depth; }
  };

  // p = 5 -> 5 (a named member of a tuple)
  static ExprPtr simple_value(const ExprPtr& n) {
    if (n->kind == Kind::Relation && n->args.size() == 2 && n->ops[0] == "=" && n->args[0]->kind == Kind::Symbol) return n->args[1];
    return n;
  }

  bool is_sep_word() const {
    return is(TokenKind::Identifier) && (lower(peek().s) == "and" || lower(peek().s) == "or");
  }
  bool text_is_sep(const std::string& s) const {
    std::string l = lower(trim(s));
    return l == "and" || l == "or" || l == "," || l == "and also";
  }

  // list := item ((',' | ';' | and | or) item)*; at the top, "p=5,q=2;p=7,q=2" is a list of tuples.
  ExprPtr list(bool top) {
    Depth d(*this);
    if (top) {
      bool semi = false, comma = false;
      int level = 0;
      for (size_t k = i; k < t.size(); ++k) {
        if (t[k].t == TokenKind::Open) ++level;
        if (t[k].t == TokenKind::Close) --level;
        if (level == 0 && t[k].t == TokenKind::Semicolon && t[k].s == ";") semi = true;
        if (level == 0 && t[k].t == TokenKind::Comma) comma = true;
      }
      if (semi && comma) {
        auto set = mk(Kind::Set);
        while (true) {
          std::vector<ExprPtr> items{item()};
          while (is(TokenKind::Comma)) {
            ++i;
            items.push_back(item());
          }
          if (items.size() == 1) {
            set->args.push_back(items[0]);
          } else {
            auto tup = mk(Kind::Tuple);
            for (auto& it : items) tup->args.push_back(simple_value(it));
            set->args.push_back(tup);
          }
          if (!is(TokenKind::Semicolon, ";")) break;
          ++i;
        }
        return set;
      }
    }
    std::vector<ExprPtr> items;
    items.push_back(item());
    while (true) {
      if (is(TokenKind::Comma) || is(TokenKind::Semicolon, ";") || is_sep_word() || (is(TokenKind::Text) && text_is_sep(peek().s))) {
        ++i;
        while (is(TokenKind::Comma) || is_sep_word() || (is(TokenKind::Text) && text_is_sep(peek().s))) ++i;
        if (is(TokenKind::End) || is(TokenKind::Close)) break;
        items.push_back(item());
      } else {
        break;
      }
    }
    if (items.size() == 1) return items[0];
    auto n = mk(top ? Kind::Set : Kind::Tuple);
    n->args = items;
    return n;
  }

  ExprPtr item() {
    Depth d(*this);
    // "x \in S": the set S.
    ExprPtr lhs = rel();
    if (is(TokenKind::Command, "in")) {
      ++i;
      return rel();
    }
    return lhs;
  }

  std::string relop() {
    const Token& k = peek();
    if (k.t == TokenKind::Relation) return k.s;
    if (k.t == TokenKind::Command) {
      if (k.s == "le" || k.s == "leq" || k.s == "leqslant") return "<=";
      if (k.s == "ge" || k.s == "geq" || k.s == "geqslant") return ">=";
      if (k.s == "lt") return "<";
      if (k.s == "gt") return ">";
      if (k.s == "ne" || k.s == "neq") return "!=";
      if (k.s == "approx") return "~";
    }
    return "";
  }

  ExprPtr rel() {
    Depth d(*this);
    ExprPtr first = sum();
    std::string op = relop();
    if (op.empty()) return first;
    auto n = mk(Kind::Relation);
    n->args.push_back(first);
    while (!(op = relop()).empty()) {
      ++i;
      n->ops.push_back(op);
      n->args.push_back(sum());
    }
    return n;
  }

  ExprPtr sum() {
    Depth d(*this);
    ExprPtr x;
    if (is(TokenKind::Operator, "-")) {
      ++i;
      x = neg(term());
    } else if (is(TokenKind::Operator, "+")) {
      ++i;
      x = term();
    } else if (is(TokenKind::Command, "pm") || is(TokenKind::Command, "mp")) {
      ++i;
      x = bin(Kind::PlusMinus, rational(0, 1), term());
    } else {
      x = term();
    }
    while (true) {
      if (is(TokenKind::Operator, "+")) { ++i; x = bin(Kind::Add, x, term()); }
      else if (is(TokenKind::Operator, "-")) { ++i; x = bin(Kind::Add, x, neg(term())); }
      else if (is(TokenKind::Command, "pm") || is(TokenKind::Command, "mp")) { ++i; x = bin(Kind::PlusMinus, x, term()); }
      else break;
    }
    return x;
  }

  bool starts_primary() const {
    const Token& k = peek();
    if (k.t == TokenKind::Number || k.t == TokenKind::Identifier) return !is_sep_word();
    if (k.t == TokenKind::Open) return k.s == "(" || k.s == "\\{" || k.s == "{" || k.s == "[";
    if (k.t == TokenKind::Command)
      return k.s == "frac" || k.s == "sqrt" || k.s == "pi" || k.s == "infty" || kFuncs.count(k.s) || kGreek.count(k.s) ||
             k.s == "begin" || k.s == "binom" || k.s == "e" || k.s == "boxed" || k.s == "lfloor" || k.s == "lceil";
    if (k.t == TokenKind::Operator) return k.s == "|" && abs_depth == 0;
    return false;
  }

  ExprPtr term() {
    Depth d(*this);
    ExprPtr x = unary();
    while (true) {
      if (is(TokenKind::Operator, "*") || is(TokenKind::Command, "cdot") || is(TokenKind::Command, "times")) {
        ++i;
        x = bin(Kind::Mul, x, unary());
      } else if (is(TokenKind::Operator, "/") || is(TokenKind::Command, "div")) {
        ++i;
        x = bin(Kind::Mul, x, inv(unary()));
      } else if (is(TokenKind::Operator, ":") && !is(TokenKind::Close, nullptr, 1)) {
        ++i;  // ratio a:b
        x = bin(Kind::Mul, x, inv(unary()));
      } else if (is(TokenKind::Operator, "%")) {
        ++i;  // percent: 28% compares as 28
      } else if (is(TokenKind::Text)) {
        // A unit or a word after a quantity ("15 cm", "0.06 yuan") is not part of the value;
        // separators ("and") end the term.
        if (text_is_sep(peek().s)) break;
        ++i;
        if (is(TokenKind::Operator, "^")) {  // cm^2
          ++i;
          if (is(TokenKind::Open, "{")) group_arg();
          else ++i;
        }
      } else if (is(TokenKind::Identifier) && kUnitWords.count(lower(peek().s)) && peek().s.size() > 1) {
        ++i;
      } else if (is(TokenKind::Identifier) && (lower(peek().s) == "percent" || lower(peek().s) == "percentage" || lower(peek().s) == "pct")) {
        ++i;
      } else if (starts_primary() && !(is(TokenKind::Open, "[") )) {
        x = bin(Kind::Mul, x, power());  // implicit multiplication: 3\sqrt{2}, 2x, (x-1)(x+1)
      } else {
        break;
      }
    }
    return x;
  }

  ExprPtr unary() {
    Depth d(*this);
    if (is(TokenKind::Operator, "-")) { ++i; return neg(unary()); }
    if (is(TokenKind::Operator, "+")) { ++i; return unary(); }
    return power();
  }

  ExprPtr group_arg() {
    // {…} or a single token (\frac12, \sqrt3)
    if (is(TokenKind::Open, "{")) {
      ++i;
      ExprPtr x = list(false);
      expect(TokenKind::Close, "}");
      return x;
    }
    const Token k = take();
    if (k.t == TokenKind::Number) {
      // \frac12: one digit each
      if (k.s.size() > 1 && k.s.find('.') == std::string::npos) {
        --i;
        std::string rest = k.s.substr(1);
        t[i].s = rest;
        return number(std::string(1, k.s[0]));
      }
      return number(k.s);
    }
    if (k.t == TokenKind::Identifier) {
      if (k.s.size() > 1) {
        --i;
        t[i].s = k.s.substr(1);
        return sym(std::string(1, k.s[0]));
      }
      return sym(k.s);
    }
    if (k.t == TokenKind::Command) {
      --i;
      return primary();
    }
    throw ParseError{};
  }

  // Digits, optionally with one '.', as an exact rational of any length (a 20-digit integer that
  // differs in its last digit is a different number).
  ExprPtr number(const std::string& s) {
    auto dot = s.find('.');
    if (dot == std::string::npos) return rational(mpq_class(mpz_class(s, 10)));
    std::string intpart = s.substr(0, dot), frac = s.substr(dot + 1);
    mpz_class den;
    mpz_ui_pow_ui(den.get_mpz_t(), 10, frac.size());
    mpz_class whole(intpart.empty() ? "0" : intpart, 10), part(frac.empty() ? "0" : frac, 10);
    return rational(mpq_class(whole * den + part, den), /*decimal=*/true);
  }

  ExprPtr power() {
    Depth d(*this);
    ExprPtr base = postfix();
    if (is(TokenKind::Operator, "^")) {
      ++i;
      ExprPtr e;
      if (is(TokenKind::Open, "{")) e = group_arg();
      else if (is(TokenKind::Operator, "-")) { ++i; e = neg(postfix_atom()); }
      else e = postfix_atom();
      base = bin(Kind::Pow, base, e);
    }
    return base;
  }

  ExprPtr postfix_atom() {
    // A single token as an exponent: 2^3, x^n, e^\pi
    const Token& k = peek();
    if (k.t == TokenKind::Number && k.s.size() > 1 && k.s.find('.') == std::string::npos) return group_arg();
    if (k.t == TokenKind::Identifier && k.s.size() > 1) return group_arg();
    return primary();
  }

  ExprPtr postfix() {
    Depth d(*this);
    ExprPtr x = primary();
    while (true) {
      if (is(TokenKind::Operator, "!")) {
        ++i;
        auto f = mk(Kind::Factorial);
        f->args = {x};
        x = f;
      } else if (is(TokenKind::Operator, "'")) {
        ++i;
        if (x->kind == Kind::Symbol) x->name += "'";
      } else {
        break;
      }
    }
    return x;
  }

  ExprPtr subscripted(ExprPtr s) {
    // x_1, a_{37}: part of the symbol's name. 204_5: a base subscript on a number.
    if (!is(TokenKind::Operator, "_")) return s;
    ++i;
    std::string sub;
    if (is(TokenKind::Open, "{")) {
      size_t open_depth = 0;
      do {
        budget.tick();
        const Token& k = take();
        if (k.t == TokenKind::Open) ++open_depth;
        else if (k.t == TokenKind::Close) --open_depth;
        else sub += k.s;
        if (k.t == TokenKind::End) throw ParseError{};
      } while (open_depth > 0);
    } else {
      sub = take().s;
    }
    if (s->kind == Kind::Symbol) {
      s->name += "_" + sub;
      return s;
    }
    auto n = mk(Kind::Symbol);  // a number in another base: keep its digits and base as a name
    n->name = (s->exact ? s->q.get_str() : std::to_string(s->num)) + "_" + sub;
    return n;
  }

  ExprPtr matrix(const std::string& env) {
    // rows separated by \\, cells by &
    auto m = mk(Kind::Matrix);
    std::vector<std::vector<ExprPtr>> rows(1);
    if (env == "array" && is(TokenKind::Open, "{")) {  // column spec
      size_t e = i;
      int dd = 0;
      do {
        if (t[e].t == TokenKind::Open) ++dd;
        if (t[e].t == TokenKind::Close) --dd;
        ++e;
        budget.tick();
      } while (dd > 0 && e < t.size());
      i = e;
    }
    while (true) {
      budget.tick();
      if (is(TokenKind::Command, "end")) {
        ++i;
        expect(TokenKind::Open, "{");
        while (!is(TokenKind::Close, "}") && !is(TokenKind::End)) ++i;
        expect(TokenKind::Close, "}");
        break;
      }
      if (is(TokenKind::End)) throw ParseError{};
      if (is(TokenKind::Semicolon, "\\\\")) {
        ++i;
        if (!rows.back().empty()) rows.emplace_back();
        continue;
      }
      if (is(TokenKind::Operator, "&")) {
        ++i;
        continue;
      }
      rows.back().push_back(sum());
    }
    if (rows.back().empty()) rows.pop_back();
    if (rows.empty()) throw ParseError{};
    m->rows = (int)rows.size();
    m->cols = (int)rows[0].size();
    for (auto& r : rows) {
      if ((int)r.size() != m->cols) throw ParseError{};
      for (auto& c : r) m->args.push_back(c);
    }
    return m;
  }

  ExprPtr bracketed(const std::string& open) {
    // ( … ), [ … ), { … }, \{ … \}: groups, tuples, intervals, sets
    ExprPtr inner = is(TokenKind::Close) ? nullptr : list(false);
    if (!is(TokenKind::Close)) throw ParseError{};
    std::string close = take().s;
    if (!inner) {
      auto n = mk(Kind::Tuple);
      return n;
    }
    if (open == "\\{" || (open == "{" && close == "}" && inner->kind == Kind::Tuple)) {
      auto n = mk(Kind::Set);
      n->args = inner->kind == Kind::Tuple ? inner->args : std::vector<ExprPtr>{inner};
      return n;
    }
    if (open == "{" && close == "}") return inner;  // grouping
    bool two = inner->kind == Kind::Tuple && inner->args.size() == 2;
    if (two && (open == "[" || close == "]")) {
      auto n = mk(Kind::Interval);
      n->args = inner->args;
      n->lc = open == "[";
      n->rc = close == "]";
      return n;
    }
    if (inner->kind == Kind::Tuple) {
      inner->paren_pair = two && open == "(" && close == ")";
      return inner;
    }
    if (open == "[" && close == "]") return inner;
    if (open != "(" && open != "[") throw ParseError{};
    return inner;
  }

  ExprPtr primary() {
    Depth d(*this);
    const Token k = take();
    switch (k.t) {
      case TokenKind::Number: return subscripted(number(k.s));
      case TokenKind::Identifier: {
        std::string w = k.s;
        std::string lw = lower(w);
        if (kFuncs.count(lw) && (is(TokenKind::Open, "(") || is(TokenKind::Operator, "^"))) return func(lw);
        if (w.size() == 1) return subscripted(sym(w));
        // a word of letters: a product of symbols in math ("ab"), text otherwise
        ExprPtr x = sym(std::string(1, w[0]));
        for (size_t c = 1; c < w.size(); ++c) x = bin(Kind::Mul, x, sym(std::string(1, w[c])));
        return x;
      }
      case TokenKind::Open: {
        if (k.s == "{" && is(TokenKind::Close, "}")) { ++i; return primary(); }
        return subscripted(bracketed(k.s));
      }
      case TokenKind::Text: {
        auto n = mk(Kind::Text);
        n->name = k.s;
        return n;
      }
      case TokenKind::Operator:
        if (k.s == "|") {
          ++abs_depth;
          ExprPtr x = sum();
          --abs_depth;
          expect(TokenKind::Operator, "|");
          auto f = mk(Kind::Function);
          f->name = "abs";
          f->args = {x};
          return f;
        }
        throw ParseError{};
      case TokenKind::Command: return command(k.s);
      default: throw ParseError{};
    }
  }

  ExprPtr func(const std::string& name) {
    auto f = mk(Kind::Function);
    f->name = name == "lg" ? "log" : name;
    ExprPtr exponent;
    if (is(TokenKind::Operator, "^")) {  // \sin^2 x = (\sin x)^2
      ++i;
      exponent = is(TokenKind::Open, "{") ? group_arg() : postfix_atom();
    }
    if (is(TokenKind::Operator, "_")) {  // \log_2
      ++i;
      ExprPtr base = is(TokenKind::Open, "{") ? group_arg() : postfix_atom();
      f->args.push_back(nullptr);
      f->args.push_back(base);
    }
    ExprPtr arg;
    if (is(TokenKind::Open, "(")) {
      ++i;
      arg = list(false);
      expect(TokenKind::Close, ")");
    } else {
      arg = power();
    }
    if (f->args.empty()) f->args.push_back(arg);
    else f->args[0] = arg;
    return exponent ? bin(Kind::Pow, f, exponent) : f;
  }

  ExprPtr command(const std::string& c) {
    if (c == "frac" || c == "dfrac" || c == "tfrac" || c == "cfrac") {
      ExprPtr n = group_arg(), dd = group_arg();
      return bin(Kind::Mul, n, inv(dd));
    }
    if (c == "binom") {
      ExprPtr n = group_arg(), kk = group_arg();
      auto f = mk(Kind::Function);
      f->name = "binom";
      f->args = {n, kk};
      return f;
    }
    if (c == "sqrt") {
      ExprPtr index;
      if (is(TokenKind::Open, "[")) {
        ++i;
        index = sum();
        expect(TokenKind::Close, "]");
      }
      ExprPtr x = group_arg();
      return bin(Kind::Pow, x, index ? inv(index) : rational(1, 2));
    }
    if (c == "lfloor" || c == "lceil") {  // \lfloor x \rfloor, \lceil x \rceil
      ExprPtr x = sum();
      expect(TokenKind::Command, c == "lfloor" ? "rfloor" : "rceil");
      auto f = mk(Kind::Function);
      f->name = c == "lfloor" ? "floor" : "ceil";
      f->args = {x};
      return f;
    }
    if (c == "pi") return sym("pi");
    if (c == "infty" || c == "infin") return sym("oo");
    if (c == "e") return sym("e");
    if (kGreek.count(c)) return subscripted(sym(c));
    if (kFuncs.count(c)) return func(c);
    if (c == "boxed" || c == "fbox" || c == "overline" || c == "mathbb" || c == "hat" || c == "vec" || c == "bar") {
      ExprPtr x = group_arg();
      return x;
    }
    if (c == "begin") {
      expect(TokenKind::Open, "{");
      std::string env;
      while (!is(TokenKind::Close, "}") && !is(TokenKind::End)) env += take().s;
      expect(TokenKind::Close, "}");
      if (env == "pmatrix" || env == "bmatrix" || env == "matrix" || env == "array" || env == "vmatrix" ||
          env == "Bmatrix" || env == "smallmatrix")
        return matrix(env);
      throw ParseError{};
    }
    if (c == "emptyset" || c == "varnothing") return mk(Kind::Set);
    static const std::set<std::string> kNotValues = {"end", "right", "left", "cup", "cap", "in", "to", "mid",
                                                     "Rightarrow", "implies", "iff", "therefore", "because"};
    if (kNotValues.count(c)) throw ParseError{};
    return subscripted(sym("\\" + c));  // an unknown name (\zzz) is a symbol
  }
};

}  // namespace

// Removes what never carries meaning before lexing.
std::string prepare(std::string s) {
  auto replace_all = [&](const std::string& from, const std::string& to) {
    size_t p = 0;
    while ((p = s.find(from, p)) != std::string::npos) {
      s.replace(p, from.size(), to);
      p += to.size();
    }
  };
  // Commands that only size or space.
  for (const char* w : {"\\left", "\\right", "\\bigl", "\\bigr", "\\Bigl", "\\Bigr", "\\big", "\\Big", "\\displaystyle",
                        "\\qquad", "\\quad", "\\limits", "\\nolimits"}) {
    size_t p = 0;
    while ((p = s.find(w, p)) != std::string::npos) {
      size_t e = p + std::strlen(w);
      if (e < s.size() && is_alpha(s[e])) {  // a longer command (\leftarrow): keep
        p = e;
        continue;
      }
      s.replace(p, e - p, " ");
    }
  }
  replace_all("\f", "\\f");  // "\frac" written in Python with a form feed
  replace_all("{,}", "");
  {  // "11,\! 111": a thousands separator
    size_t p = 0;
    while ((p = s.find(",\\!", p)) != std::string::npos) {
      size_t e = p + 3;
      while (e < s.size() && s[e] == ' ') ++e;
      s.replace(p, e - p, ",");
      ++p;
    }
  }
  replace_all("\\!", "");
  replace_all("^\\circ", "");
  replace_all("^{\\circ}", "");
  replace_all("\\circ", "");
  replace_all("\\%", "%");
  replace_all("\\$", "");
  replace_all("$", "");
  replace_all("\\dfrac", "\\frac");
  replace_all("\\tfrac", "\\frac");
  replace_all("\\cfrac", "\\frac");
  replace_all("\\lbrace", "\\{");
  replace_all("\\rbrace", "\\}");
  replace_all("\\lvert", "|");
  replace_all("\\rvert", "|");
  replace_all("\\vert", "|");
  // A doubled backslash before a command is an escaping artefact (\\frac): one is enough; a
  // doubled backslash before anything else is a matrix row break and stays.
  for (size_t p = 0; p + 2 < s.size(); ++p)
    if (s[p] == '\\' && s[p + 1] == '\\' && is_alpha(s[p + 2]) && (p == 0 || s[p - 1] != '\\')) s.erase(p, 1);
  replace_all("\t", " ");
  return s;
}

bool is_unit_word(const std::string& w) { return kUnitWords.count(w) > 0; }

ExprPtr parse_answer(const std::string& text, bool comma_decimal, Budget& budget) {
  std::string s = prepare(text);
  if (trim(s).empty()) return nullptr;
  Parser p{lex(s, comma_decimal, budget), 0, budget};
  ExprPtr x = p.list(true);
  if (!p.is(TokenKind::End)) throw ParseError{};
  return x;
}

// Unions: parsed from "A \cup B" at the top of a candidate.
ExprPtr parse_with_unions(const std::string& s, bool comma_decimal, Budget& b) {
  std::vector<std::string> parts;
  size_t start = 0, p;
  while ((p = s.find("\\cup", start)) != std::string::npos) {
    parts.push_back(s.substr(start, p - start));
    start = p + 4;
  }
  parts.push_back(s.substr(start));
  if (parts.size() == 1) return parse_answer(s, comma_decimal, b);
  auto u = mk(Kind::Set);  // a union of intervals compares like a set of its pieces
  for (auto& part : parts) {
    std::string q = part;
    // "x \in (2,12) \cup (12,102)": drop the membership prefix
    size_t in = q.find("\\in");
    while (in != std::string::npos && in + 3 < q.size() && is_alpha(q[in + 3])) in = q.find("\\in", in + 3);  // not \infty
    if (in != std::string::npos && u->args.empty()) q = q.substr(in + 3);
    ExprPtr n = parse_answer(q, comma_decimal, b);
    if (!n) throw ParseError{};
    u->args.push_back(n);
  }
  return u;
}

}  // namespace grpo::rewards::math

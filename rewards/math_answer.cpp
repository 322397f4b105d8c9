#include "rewards/math_answer.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <complex>
#include <cstring>
#include <functional>
#include <gmpxx.h>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <vector>

namespace grpo::rewards {

namespace {

// ---------------------------------------------------------------------------------------------
// Work budget: every parse and comparison counts steps and stops past the limit.
struct BudgetExceeded {};
struct Budget {
  long steps = 0, limit = 400000;
  void tick(long n = 1) {
    steps += n;
    if (steps > limit) throw BudgetExceeded{};
  }
};

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
std::string lower(std::string s) {
  for (auto& c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}
std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}
bool at(const std::string& s, size_t i, const char* lit) { return s.compare(i, std::strlen(lit), lit) == 0; }
// Index of the brace closing the one at `open`, or npos.
size_t close_brace(const std::string& s, size_t open, char o = '{', char c = '}') {
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

// ---------------------------------------------------------------------------------------------
// Expression tree.
struct Node;
using P = std::shared_ptr<Node>;
enum class K { Num, Sym, Add, Mul, Pow, Func, Fact, PM, Tuple, Set, Interval, Union, Matrix, Rel, Text };
struct Node {
  K k;
  double num = 0;          // Num
  bool exact = false;      // Num: `q` holds the value exactly (any length: GMP)
  bool decimal = false;    // Num: written with a decimal point (0.333 may stand for 1/3, rounded)
  mpq_class q;
  std::string name;        // Sym, Func, Text
  std::vector<P> a;        // children
  std::vector<std::string> ops;  // Rel: ops[i] between a[i] and a[i+1] ("=", "<", "<=", ">", ">=", "!=")
  bool lc = false, rc = false;   // Interval ends closed
  int rows = 0, cols = 0;        // Matrix
  bool paren_pair = false;       // Tuple written (a, b): may be an open interval
};
P mk(K k) { auto n = std::make_shared<Node>(); n->k = k; return n; }
P num(double v) { auto n = mk(K::Num); n->num = v; return n; }
P rational(mpq_class v, bool decimal = false) {
  auto n = mk(K::Num);
  v.canonicalize();
  n->q = v; n->exact = true; n->decimal = decimal; n->num = v.get_d();
  return n;
}
P rational(long p, long q) { return rational(mpq_class(mpz_class(p), mpz_class(q))); }
P sym(const std::string& s) { auto n = mk(K::Sym); n->name = s; return n; }
P bin(K k, P x, P y) { auto n = mk(k); n->a = {x, y}; return n; }
P neg(P x) { return bin(K::Mul, rational(-1, 1), x); }
P inv(P x) { return bin(K::Pow, x, rational(-1, 1)); }

// ---------------------------------------------------------------------------------------------
// Lexer over LaTeX / plain math.
enum class T { Num, Ident, Cmd, Op, Open, Close, Comma, Semi, Rel, Text, End };
struct Tok {
  T t;
  std::string s;  // text: digits, identifier, command name (without '\'), operator
};

struct Lexer {
  const std::string& s;
  bool comma_decimal;
  Budget& budget;
  std::vector<Tok> out;

  void number(size_t& i) {
    size_t j = i;
    // Clock times and ratios written like them (12:00, 7:32) compare as written.
    {
      size_t k = i;
      while (k < s.size() && is_digit(s[k])) ++k;
      if (k - i <= 2 && k + 2 < s.size() && s[k] == ':' && is_digit(s[k + 1]) && is_digit(s[k + 2]) &&
          (k + 3 == s.size() || !is_digit(s[k + 3]))) {
        out.push_back({T::Text, s.substr(i, k + 3 - i)});
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
    out.push_back({T::Num, frac.empty() ? digits : digits + "." + frac});
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
          out.push_back({T::Num, "0." + frac});
          i = j;
        } else {
          number(i);
        }
        continue;
      }
      if (is_alpha(c)) {
        size_t j = i;
        while (j < s.size() && is_alpha(s[j])) ++j;
        out.push_back({T::Ident, s.substr(i, j - i)});
        i = j;
        continue;
      }
      if (c == '\\') {
        if (i + 1 < s.size() && !is_alpha(s[i + 1])) {
          char d = s[i + 1];
          i += 2;
          if (d == '{') out.push_back({T::Open, "\\{"});
          else if (d == '}') out.push_back({T::Close, "\\}"});
          else if (d == '\\') out.push_back({T::Semi, "\\\\"});  // matrix row break
          else if (d == '%') out.push_back({T::Op, "%"});
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
            if (math_font && letters) out.push_back({T::Ident, inner});
            else if (math_font || std::none_of(inner.begin(), inner.end(), is_alpha)) {  // \text{2}: a number
              Lexer sub{inner, comma_decimal, budget, {}};
              sub.run();
              sub.out.pop_back();
              out.insert(out.end(), sub.out.begin(), sub.out.end());
            } else {
              out.push_back({T::Text, inner});
            }
          }
          continue;
        }
        if (cmd.rfind("qquad", 0) == 0 || cmd.rfind("quad", 0) == 0) {  // "\quadx": spacing glued to a name
          std::string rest = cmd.substr(cmd[0] == 'q' && cmd[1] == 'q' ? 5 : 4);
          if (!rest.empty()) out.push_back({T::Ident, rest});
          continue;
        }
        out.push_back({T::Cmd, cmd});
        continue;
      }
      if (c == '(' || c == '[' || c == '{') { out.push_back({T::Open, std::string(1, c)}); ++i; continue; }
      if (c == ')' || c == ']' || c == '}') { out.push_back({T::Close, std::string(1, c)}); ++i; continue; }
      if (c == ',') { out.push_back({T::Comma, ","}); ++i; continue; }
      if (c == ';') { out.push_back({T::Semi, ";"}); ++i; continue; }
      if (c == '<' || c == '>' || c == '=' || c == '!') {
        if (c == '!' && !(i + 1 < s.size() && s[i + 1] == '=')) { out.push_back({T::Op, "!"}); ++i; continue; }
        std::string op(1, c);
        if (i + 1 < s.size() && s[i + 1] == '=') { op += '='; ++i; }
        ++i;
        if (op == "==") op = "=";
        out.push_back({T::Rel, op});
        continue;
      }
      if (std::strchr("+-*/^_|&:%'", c)) { out.push_back({T::Op, std::string(1, c)}); ++i; continue; }
      // Unicode we know, as UTF-8.
      if (at(s, i, "²")) { out.push_back({T::Op, "^"}); out.push_back({T::Num, "2"}); i += 2; continue; }
      if (at(s, i, "³")) { out.push_back({T::Op, "^"}); out.push_back({T::Num, "3"}); i += 2; continue; }
      if (at(s, i, "°")) { i += 2; continue; }
      if (at(s, i, "π")) { out.push_back({T::Cmd, "pi"}); i += 2; continue; }
      if (at(s, i, "√")) { out.push_back({T::Cmd, "sqrt"}); i += 3; continue; }
      if (at(s, i, "≤")) { out.push_back({T::Rel, "<="}); i += 3; continue; }
      if (at(s, i, "≥")) { out.push_back({T::Rel, ">="}); i += 3; continue; }
      if (at(s, i, "≠")) { out.push_back({T::Rel, "!="}); i += 3; continue; }
      if (at(s, i, "±")) { out.push_back({T::Cmd, "pm"}); i += 2; continue; }
      if (at(s, i, "∞")) { out.push_back({T::Cmd, "infty"}); i += 3; continue; }
      if (at(s, i, "€")) { i += 3; continue; }
      throw std::runtime_error("unexpected character");
    }
    out.push_back({T::End, ""});
  }
};

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

struct ParseError {};

struct Parser {
  std::vector<Tok> t;
  size_t i = 0;
  Budget& budget;
  int depth = 0;
  int abs_depth = 0;  // inside |...|: a bar closes rather than opens

  const Tok& peek(size_t k = 0) const { return t[std::min(i + k, t.size() - 1)]; }
  bool is(T tt, const char* s = nullptr, size_t k = 0) const {
    return peek(k).t == tt && (!s || peek(k).s == s);
  }
  Tok take() { return t[std::min(i++, t.size() - 1)]; }
  void expect(T tt, const char* s) {
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
  static P simple_value(const P& n) {
    if (n->k == K::Rel && n->a.size() == 2 && n->ops[0] == "=" && n->a[0]->k == K::Sym) return n->a[1];
    return n;
  }

  bool is_sep_word() const {
    return is(T::Ident) && (lower(peek().s) == "and" || lower(peek().s) == "or");
  }
  bool text_is_sep(const std::string& s) const {
    std::string l = lower(trim(s));
    return l == "and" || l == "or" || l == "," || l == "and also";
  }

  // list := item ((',' | ';' | and | or) item)*; at the top, "p=5,q=2;p=7,q=2" is a list of tuples.
  P list(bool top) {
    Depth d(*this);
    if (top) {
      bool semi = false, comma = false;
      int level = 0;
      for (size_t k = i; k < t.size(); ++k) {
        if (t[k].t == T::Open) ++level;
        if (t[k].t == T::Close) --level;
        if (level == 0 && t[k].t == T::Semi && t[k].s == ";") semi = true;
        if (level == 0 && t[k].t == T::Comma) comma = true;
      }
      if (semi && comma) {
        auto set = mk(K::Set);
        while (true) {
          std::vector<P> items{item()};
          while (is(T::Comma)) {
            ++i;
            items.push_back(item());
          }
          if (items.size() == 1) {
            set->a.push_back(items[0]);
          } else {
            auto tup = mk(K::Tuple);
            for (auto& it : items) tup->a.push_back(simple_value(it));
            set->a.push_back(tup);
          }
          if (!is(T::Semi, ";")) break;
          ++i;
        }
        return set;
      }
    }
    std::vector<P> items;
    items.push_back(item());
    while (true) {
      if (is(T::Comma) || is(T::Semi, ";") || is_sep_word() || (is(T::Text) && text_is_sep(peek().s))) {
        ++i;
        while (is(T::Comma) || is_sep_word() || (is(T::Text) && text_is_sep(peek().s))) ++i;
        if (is(T::End) || is(T::Close)) break;
        items.push_back(item());
      } else {
        break;
      }
    }
    if (items.size() == 1) return items[0];
    auto n = mk(top ? K::Set : K::Tuple);
    n->a = items;
    return n;
  }

  P item() {
    Depth d(*this);
    // "x \in S": the set S.
    P lhs = rel();
    if (is(T::Cmd, "in")) {
      ++i;
      return rel();
    }
    return lhs;
  }

  std::string relop() {
    const Tok& k = peek();
    if (k.t == T::Rel) return k.s;
    if (k.t == T::Cmd) {
      if (k.s == "le" || k.s == "leq" || k.s == "leqslant") return "<=";
      if (k.s == "ge" || k.s == "geq" || k.s == "geqslant") return ">=";
      if (k.s == "lt") return "<";
      if (k.s == "gt") return ">";
      if (k.s == "ne" || k.s == "neq") return "!=";
      if (k.s == "approx") return "~";
    }
    return "";
  }

  P rel() {
    Depth d(*this);
    P first = sum();
    std::string op = relop();
    if (op.empty()) return first;
    auto n = mk(K::Rel);
    n->a.push_back(first);
    while (!(op = relop()).empty()) {
      ++i;
      n->ops.push_back(op);
      n->a.push_back(sum());
    }
    return n;
  }

  P sum() {
    Depth d(*this);
    P x;
    if (is(T::Op, "-")) {
      ++i;
      x = neg(term());
    } else if (is(T::Op, "+")) {
      ++i;
      x = term();
    } else if (is(T::Cmd, "pm") || is(T::Cmd, "mp")) {
      ++i;
      x = bin(K::PM, rational(0, 1), term());
    } else {
      x = term();
    }
    while (true) {
      if (is(T::Op, "+")) { ++i; x = bin(K::Add, x, term()); }
      else if (is(T::Op, "-")) { ++i; x = bin(K::Add, x, neg(term())); }
      else if (is(T::Cmd, "pm") || is(T::Cmd, "mp")) { ++i; x = bin(K::PM, x, term()); }
      else break;
    }
    return x;
  }

  bool starts_primary() const {
    const Tok& k = peek();
    if (k.t == T::Num || k.t == T::Ident) return !is_sep_word();
    if (k.t == T::Open) return k.s == "(" || k.s == "\\{" || k.s == "{" || k.s == "[";
    if (k.t == T::Cmd)
      return k.s == "frac" || k.s == "sqrt" || k.s == "pi" || k.s == "infty" || kFuncs.count(k.s) || kGreek.count(k.s) ||
             k.s == "begin" || k.s == "binom" || k.s == "e" || k.s == "boxed" || k.s == "lfloor" || k.s == "lceil";
    if (k.t == T::Op) return k.s == "|" && abs_depth == 0;
    return false;
  }

  P term() {
    Depth d(*this);
    P x = unary();
    while (true) {
      if (is(T::Op, "*") || is(T::Cmd, "cdot") || is(T::Cmd, "times")) {
        ++i;
        x = bin(K::Mul, x, unary());
      } else if (is(T::Op, "/") || is(T::Cmd, "div")) {
        ++i;
        x = bin(K::Mul, x, inv(unary()));
      } else if (is(T::Op, ":") && !is(T::Close, nullptr, 1)) {
        ++i;  // ratio a:b
        x = bin(K::Mul, x, inv(unary()));
      } else if (is(T::Op, "%")) {
        ++i;  // percent: 28% compares as 28
      } else if (is(T::Text)) {
        // A unit or a word after a quantity ("15 cm", "0.06 yuan") is not part of the value;
        // separators ("and") end the term.
        if (text_is_sep(peek().s)) break;
        ++i;
        if (is(T::Op, "^")) {  // cm^2
          ++i;
          if (is(T::Open, "{")) group_arg();
          else ++i;
        }
      } else if (is(T::Ident) && kUnitWords.count(lower(peek().s)) && peek().s.size() > 1) {
        ++i;
      } else if (is(T::Ident) && (lower(peek().s) == "percent" || lower(peek().s) == "percentage" || lower(peek().s) == "pct")) {
        ++i;
      } else if (starts_primary() && !(is(T::Open, "[") )) {
        x = bin(K::Mul, x, power());  // implicit multiplication: 3\sqrt{2}, 2x, (x-1)(x+1)
      } else {
        break;
      }
    }
    return x;
  }

  P unary() {
    Depth d(*this);
    if (is(T::Op, "-")) { ++i; return neg(unary()); }
    if (is(T::Op, "+")) { ++i; return unary(); }
    return power();
  }

  P group_arg() {
    // {…} or a single token (\frac12, \sqrt3)
    if (is(T::Open, "{")) {
      ++i;
      P x = list(false);
      expect(T::Close, "}");
      return x;
    }
    const Tok k = take();
    if (k.t == T::Num) {
      // \frac12: one digit each
      if (k.s.size() > 1 && k.s.find('.') == std::string::npos) {
        --i;
        std::string rest = k.s.substr(1);
        t[i].s = rest;
        return number(std::string(1, k.s[0]));
      }
      return number(k.s);
    }
    if (k.t == T::Ident) {
      if (k.s.size() > 1) {
        --i;
        t[i].s = k.s.substr(1);
        return sym(std::string(1, k.s[0]));
      }
      return sym(k.s);
    }
    if (k.t == T::Cmd) {
      --i;
      return primary();
    }
    throw ParseError{};
  }

  // Digits, optionally with one '.', as an exact rational of any length (a 20-digit integer that
  // differs in its last digit is a different number).
  P number(const std::string& s) {
    auto dot = s.find('.');
    if (dot == std::string::npos) return rational(mpq_class(mpz_class(s, 10)));
    std::string intpart = s.substr(0, dot), frac = s.substr(dot + 1);
    mpz_class den;
    mpz_ui_pow_ui(den.get_mpz_t(), 10, frac.size());
    mpz_class whole(intpart.empty() ? "0" : intpart, 10), part(frac.empty() ? "0" : frac, 10);
    return rational(mpq_class(whole * den + part, den), /*decimal=*/true);
  }

  P power() {
    Depth d(*this);
    P base = postfix();
    if (is(T::Op, "^")) {
      ++i;
      P e;
      if (is(T::Open, "{")) e = group_arg();
      else if (is(T::Op, "-")) { ++i; e = neg(postfix_atom()); }
      else e = postfix_atom();
      base = bin(K::Pow, base, e);
    }
    return base;
  }

  P postfix_atom() {
    // A single token as an exponent: 2^3, x^n, e^\pi
    const Tok& k = peek();
    if (k.t == T::Num && k.s.size() > 1 && k.s.find('.') == std::string::npos) return group_arg();
    if (k.t == T::Ident && k.s.size() > 1) return group_arg();
    return primary();
  }

  P postfix() {
    Depth d(*this);
    P x = primary();
    while (true) {
      if (is(T::Op, "!")) {
        ++i;
        auto f = mk(K::Fact);
        f->a = {x};
        x = f;
      } else if (is(T::Op, "'")) {
        ++i;
        if (x->k == K::Sym) x->name += "'";
      } else {
        break;
      }
    }
    return x;
  }

  P subscripted(P s) {
    // x_1, a_{37}: part of the symbol's name. 204_5: a base subscript on a number.
    if (!is(T::Op, "_")) return s;
    ++i;
    std::string sub;
    if (is(T::Open, "{")) {
      size_t open_depth = 0;
      do {
        budget.tick();
        const Tok& k = take();
        if (k.t == T::Open) ++open_depth;
        else if (k.t == T::Close) --open_depth;
        else sub += k.s;
        if (k.t == T::End) throw ParseError{};
      } while (open_depth > 0);
    } else {
      sub = take().s;
    }
    if (s->k == K::Sym) {
      s->name += "_" + sub;
      return s;
    }
    auto n = mk(K::Sym);  // a number in another base: keep its digits and base as a name
    n->name = (s->exact ? s->q.get_str() : std::to_string(s->num)) + "_" + sub;
    return n;
  }

  P matrix(const std::string& env) {
    // rows separated by \\, cells by &
    auto m = mk(K::Matrix);
    std::vector<std::vector<P>> rows(1);
    if (env == "array" && is(T::Open, "{")) {  // column spec
      size_t e = i;
      int dd = 0;
      do {
        if (t[e].t == T::Open) ++dd;
        if (t[e].t == T::Close) --dd;
        ++e;
        budget.tick();
      } while (dd > 0 && e < t.size());
      i = e;
    }
    while (true) {
      budget.tick();
      if (is(T::Cmd, "end")) {
        ++i;
        expect(T::Open, "{");
        while (!is(T::Close, "}") && !is(T::End)) ++i;
        expect(T::Close, "}");
        break;
      }
      if (is(T::End)) throw ParseError{};
      if (is(T::Semi, "\\\\")) {
        ++i;
        if (!rows.back().empty()) rows.emplace_back();
        continue;
      }
      if (is(T::Op, "&")) {
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
      for (auto& c : r) m->a.push_back(c);
    }
    return m;
  }

  P bracketed(const std::string& open) {
    // ( … ), [ … ), { … }, \{ … \}: groups, tuples, intervals, sets
    P inner = is(T::Close) ? nullptr : list(false);
    if (!is(T::Close)) throw ParseError{};
    std::string close = take().s;
    if (!inner) {
      auto n = mk(K::Tuple);
      return n;
    }
    if (open == "\\{" || (open == "{" && close == "}" && inner->k == K::Tuple)) {
      auto n = mk(K::Set);
      n->a = inner->k == K::Tuple ? inner->a : std::vector<P>{inner};
      return n;
    }
    if (open == "{" && close == "}") return inner;  // grouping
    bool two = inner->k == K::Tuple && inner->a.size() == 2;
    if (two && (open == "[" || close == "]")) {
      auto n = mk(K::Interval);
      n->a = inner->a;
      n->lc = open == "[";
      n->rc = close == "]";
      return n;
    }
    if (inner->k == K::Tuple) {
      inner->paren_pair = two && open == "(" && close == ")";
      return inner;
    }
    if (open == "[" && close == "]") return inner;
    if (open != "(" && open != "[") throw ParseError{};
    return inner;
  }

  P primary() {
    Depth d(*this);
    const Tok k = take();
    switch (k.t) {
      case T::Num: return subscripted(number(k.s));
      case T::Ident: {
        std::string w = k.s;
        std::string lw = lower(w);
        if (kFuncs.count(lw) && (is(T::Open, "(") || is(T::Op, "^"))) return func(lw);
        if (w.size() == 1) return subscripted(sym(w));
        // a word of letters: a product of symbols in math ("ab"), text otherwise
        P x = sym(std::string(1, w[0]));
        for (size_t c = 1; c < w.size(); ++c) x = bin(K::Mul, x, sym(std::string(1, w[c])));
        return x;
      }
      case T::Open: {
        if (k.s == "{" && is(T::Close, "}")) { ++i; return primary(); }
        return subscripted(bracketed(k.s));
      }
      case T::Text: {
        auto n = mk(K::Text);
        n->name = k.s;
        return n;
      }
      case T::Op:
        if (k.s == "|") {
          ++abs_depth;
          P x = sum();
          --abs_depth;
          expect(T::Op, "|");
          auto f = mk(K::Func);
          f->name = "abs";
          f->a = {x};
          return f;
        }
        throw ParseError{};
      case T::Cmd: return command(k.s);
      default: throw ParseError{};
    }
  }

  P func(const std::string& name) {
    auto f = mk(K::Func);
    f->name = name == "lg" ? "log" : name;
    P exponent;
    if (is(T::Op, "^")) {  // \sin^2 x = (\sin x)^2
      ++i;
      exponent = is(T::Open, "{") ? group_arg() : postfix_atom();
    }
    if (is(T::Op, "_")) {  // \log_2
      ++i;
      P base = is(T::Open, "{") ? group_arg() : postfix_atom();
      f->a.push_back(nullptr);
      f->a.push_back(base);
    }
    P arg;
    if (is(T::Open, "(")) {
      ++i;
      arg = list(false);
      expect(T::Close, ")");
    } else {
      arg = power();
    }
    if (f->a.empty()) f->a.push_back(arg);
    else f->a[0] = arg;
    return exponent ? bin(K::Pow, f, exponent) : f;
  }

  P command(const std::string& c) {
    if (c == "frac" || c == "dfrac" || c == "tfrac" || c == "cfrac") {
      P n = group_arg(), dd = group_arg();
      return bin(K::Mul, n, inv(dd));
    }
    if (c == "binom") {
      P n = group_arg(), kk = group_arg();
      auto f = mk(K::Func);
      f->name = "binom";
      f->a = {n, kk};
      return f;
    }
    if (c == "sqrt") {
      P index;
      if (is(T::Open, "[")) {
        ++i;
        index = sum();
        expect(T::Close, "]");
      }
      P x = group_arg();
      return bin(K::Pow, x, index ? inv(index) : rational(1, 2));
    }
    if (c == "lfloor" || c == "lceil") {  // \lfloor x \rfloor, \lceil x \rceil
      P x = sum();
      expect(T::Cmd, c == "lfloor" ? "rfloor" : "rceil");
      auto f = mk(K::Func);
      f->name = c == "lfloor" ? "floor" : "ceil";
      f->a = {x};
      return f;
    }
    if (c == "pi") return sym("pi");
    if (c == "infty" || c == "infin") return sym("oo");
    if (c == "e") return sym("e");
    if (kGreek.count(c)) return subscripted(sym(c));
    if (kFuncs.count(c)) return func(c);
    if (c == "boxed" || c == "fbox" || c == "overline" || c == "mathbb" || c == "hat" || c == "vec" || c == "bar") {
      P x = group_arg();
      return x;
    }
    if (c == "begin") {
      expect(T::Open, "{");
      std::string env;
      while (!is(T::Close, "}") && !is(T::End)) env += take().s;
      expect(T::Close, "}");
      if (env == "pmatrix" || env == "bmatrix" || env == "matrix" || env == "array" || env == "vmatrix" ||
          env == "Bmatrix" || env == "smallmatrix")
        return matrix(env);
      throw ParseError{};
    }
    if (c == "emptyset" || c == "varnothing") return mk(K::Set);
    static const std::set<std::string> kNotValues = {"end", "right", "left", "cup", "cap", "in", "to", "mid",
                                                     "Rightarrow", "implies", "iff", "therefore", "because"};
    if (kNotValues.count(c)) throw ParseError{};
    return subscripted(sym("\\" + c));  // an unknown name (\zzz) is a symbol
  }
};

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

P parse_answer(const std::string& text, bool comma_decimal, Budget& budget) {
  std::string s = prepare(text);
  if (trim(s).empty()) return nullptr;
  Lexer lx{s, comma_decimal, budget, {}};
  lx.run();
  Parser p{std::move(lx.out), 0, budget};
  P x = p.list(true);
  if (!p.is(T::End)) throw ParseError{};
  return x;
}

// ---------------------------------------------------------------------------------------------
// Evaluation at a point.
using C = std::complex<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

C eval(const P& n, const std::map<std::string, C>& env, Budget& b) {
  b.tick();
  switch (n->k) {
    case K::Num: return n->num;
    case K::Sym: {
      if (n->name == "pi") return M_PI;
      if (n->name == "e") return M_E;
      if (n->name == "oo") return std::numeric_limits<double>::infinity();
      auto it = env.find(n->name);
      return it == env.end() ? C(kNaN) : it->second;
    }
    case K::Add:
    case K::Mul: {
      C x = eval(n->a[0], env, b), y = eval(n->a[1], env, b);
      // Real operands in real arithmetic: -1 * inf is -inf, not (-inf, nan) as complex gives.
      if (x.imag() == 0 && y.imag() == 0) return n->k == K::Add ? x.real() + y.real() : x.real() * y.real();
      return n->k == K::Add ? x + y : x * y;
    }
    case K::Pow: {
      C x = eval(n->a[0], env, b), y = eval(n->a[1], env, b);
      if (std::abs(y) > 1e4) return kNaN;
      if (y.imag() == 0 && y.real() == std::round(y.real())) {  // integer powers: exact sign
        double r = std::pow(x.real(), y.real());
        if (x.imag() == 0) return r;
      }
      // Odd roots of negative reals: the real root (x^(1/3) of -8 is -2), as people mean it.
      if (x.imag() == 0 && x.real() < 0 && y.imag() == 0) {
        for (int q = 3; q <= 15; q += 2)
          for (int pnum = -30; pnum <= 30; ++pnum)
            if (std::fabs(y.real() * q - pnum) < 1e-12) {
              double root = -std::pow(-x.real(), 1.0 / q);
              return std::pow(root, (double)pnum);
            }
      }
      return std::pow(x, y);
    }
    case K::Fact: {
      C x = eval(n->a[0], env, b);
      if (x.imag() != 0 || x.real() < 0 || x.real() > 170) return kNaN;
      return std::tgamma(x.real() + 1);
    }
    case K::Func: {
      if (n->name == "binom") {
        C nn = eval(n->a[0], env, b), kk = eval(n->a[1], env, b);
        return std::tgamma(nn.real() + 1) / (std::tgamma(kk.real() + 1) * std::tgamma(nn.real() - kk.real() + 1));
      }
      C x = eval(n->a[0], env, b);
      const std::string& f = n->name;
      if (f == "sin") return std::sin(x);
      if (f == "cos") return std::cos(x);
      if (f == "tan") return std::tan(x);
      if (f == "sec") return 1.0 / std::cos(x);
      if (f == "csc") return 1.0 / std::sin(x);
      if (f == "cot") return 1.0 / std::tan(x);
      if (f == "arcsin") return std::asin(x);
      if (f == "arccos") return std::acos(x);
      if (f == "arctan") return std::atan(x);
      if (f == "sinh") return std::sinh(x);
      if (f == "cosh") return std::cosh(x);
      if (f == "tanh") return std::tanh(x);
      if (f == "exp") return std::exp(x);
      if (f == "ln") return std::log(x);
      if (f == "abs") return std::abs(x);
      if (f == "floor" || f == "ceil") {
        if (x.imag() != 0) return kNaN;
        return f == "floor" ? std::floor(x.real()) : std::ceil(x.real());
      }
      if (f == "log") {
        if (n->a.size() > 1 && n->a[1]) return std::log(x) / std::log(eval(n->a[1], env, b));
        return std::log(x);  // natural log, as sympy reads \log
      }
      return kNaN;
    }
    default: return kNaN;
  }
}

void symbols(const P& n, std::set<std::string>& out) {
  if (!n) return;
  if (n->k == K::Sym && n->name != "pi" && n->name != "e" && n->name != "oo") out.insert(n->name);
  for (auto& c : n->a) symbols(c, out);
}

bool scalar(const P& n) {
  if (!n) return false;
  switch (n->k) {
    case K::Num: case K::Sym: return true;
    case K::Add: case K::Mul: case K::Pow: case K::Func: case K::Fact:
      return std::all_of(n->a.begin(), n->a.end(), [](const P& c) { return !c || scalar(c); });
    default: return false;
  }
}

bool has_pm(const P& n) {
  if (!n) return false;
  if (n->k == K::PM) return true;
  return std::any_of(n->a.begin(), n->a.end(), has_pm);
}

// a ± b -> {a + b, a - b}, through any enclosing arithmetic (at most 16 variants).
std::vector<P> expand_pm(const P& n, Budget& b) {
  b.tick();
  if (!n || !has_pm(n)) return {n};
  if (n->k == K::PM) {
    std::vector<P> out;
    for (auto& x : expand_pm(n->a[0], b))
      for (auto& y : expand_pm(n->a[1], b)) {
        out.push_back(bin(K::Add, x, y));
        out.push_back(bin(K::Add, x, neg(y)));
      }
    if (out.size() > 16) throw BudgetExceeded{};
    return out;
  }
  std::vector<std::vector<P>> parts;
  for (auto& c : n->a) parts.push_back(expand_pm(c, b));
  std::vector<std::vector<P>> combos{{}};
  for (auto& alts : parts) {
    std::vector<std::vector<P>> next;
    for (auto& pre : combos)
      for (auto& alt : alts) {
        auto v = pre;
        v.push_back(alt);
        next.push_back(v);
      }
    combos = std::move(next);
    if (combos.size() > 16) throw BudgetExceeded{};
  }
  std::vector<P> out;
  for (auto& cmb : combos) {
    auto m = std::make_shared<Node>(*n);
    m->a = cmb;
    out.push_back(m);
  }
  return out;
}

struct Checker {
  const MathCheckOptions& o;
  Budget& b;
  double tol() const { return std::pow(10.0, -o.precision); }

  bool close(C x, C y, double t) const {
    if (std::isnan(x.real()) || std::isnan(y.real()) || std::isnan(x.imag()) || std::isnan(y.imag())) return false;
    if (std::isinf(x.real()) || std::isinf(y.real())) return x == y;
    double scale = std::max({1.0, std::abs(x), std::abs(y)});
    return std::abs(x - y) <= t * scale;
  }

  // The exact value of an expression made of numbers, +, * and integer powers; nullopt when it
  // has symbols, functions or irrational powers, or when the numbers grow past the budget.
  struct Exact {
    mpq_class value;
    bool decimal = false;  // a decimal literal took part: compare with the tolerance
  };
  std::optional<Exact> exact_value(const P& n) {
    b.tick();
    if (!n) return std::nullopt;
    if (n->k == K::Num) {
      if (!n->exact) return std::nullopt;
      return Exact{n->q, n->decimal};
    }
    if (n->k != K::Add && n->k != K::Mul && n->k != K::Pow) return std::nullopt;
    auto x = exact_value(n->a[0]);
    if (!x) return std::nullopt;
    auto y = exact_value(n->a[1]);
    if (!y) return std::nullopt;
    Exact r{0, x->decimal || y->decimal};
    if (n->k == K::Add) {
      r.value = x->value + y->value;
    } else if (n->k == K::Mul) {
      r.value = x->value * y->value;
    } else {
      if (y->value.get_den() != 1 || abs(y->value) > 4096 || (x->value == 0 && y->value < 0)) return std::nullopt;
      long e = y->value.get_num().get_si();
      size_t bits = mpz_sizeinbase(x->value.get_num().get_mpz_t(), 2) + mpz_sizeinbase(x->value.get_den().get_mpz_t(), 2);
      b.tick(static_cast<long>(bits) * std::labs(e) / 64);
      mpz_class num, den;
      mpz_pow_ui(num.get_mpz_t(), x->value.get_num().get_mpz_t(), std::labs(e));
      mpz_pow_ui(den.get_mpz_t(), x->value.get_den().get_mpz_t(), std::labs(e));
      r.value = e >= 0 ? mpq_class(num, den) : mpq_class(den, num);
      r.value.canonicalize();
    }
    return r;
  }

  // Scalar expressions: exact rationals exactly (1/1000001 is not 1/1000000), a decimal against a
  // number within the tolerance, otherwise at several points, real and complex, that give every
  // symbol its own value: |x| is not x, sqrt(x^2) is not x, and sin^2 x + cos^2 x is 1 although
  // only one side names x.
  bool scalar_equal(const P& x, const P& y) {
    auto ex = exact_value(x), ey = exact_value(y);
    if (ex && ey) {
      if (ex->value == ey->value) return true;
      if (!ex->decimal && !ey->decimal) return false;
      // A decimal may be a rounded value: equal within 10^-precision relative (.0000673 is not
      // .0000672, 0.3333333 is 1/3).
      mpz_class scale;
      mpz_ui_pow_ui(scale.get_mpz_t(), 10, o.precision);
      mpq_class diff = abs(ex->value - ey->value), size = std::max(abs(ex->value), abs(ey->value));
      return diff * scale <= size;
    }
    std::set<std::string> sx, sy;
    symbols(x, sx);
    symbols(y, sy);
    std::set<std::string> all = sx;
    all.insert(sy.begin(), sy.end());
    if (!o.strict && sx.size() == sy.size() && sx != sy) {
      // f(x) vs f(y): one symbol differs, compared under renaming
      std::vector<std::string> only_x, only_y;
      std::set_difference(sx.begin(), sx.end(), sy.begin(), sy.end(), std::back_inserter(only_x));
      std::set_difference(sy.begin(), sy.end(), sx.begin(), sx.end(), std::back_inserter(only_y));
      if (only_x.size() == 1 && only_y.size() == 1) return scalar_equal(x, rename(y, only_y[0], only_x[0]));
      return false;
    }
    // Rows of values; symbol k takes column k % 6, shifted by 0.0917 per further six symbols.
    static const C pts[][6] = {{1.7312, 2.2187, 1.9043, 2.6511, 1.8326, 2.4129},
                               {2.8143, 1.6257, 2.3781, 1.7719, 2.9347, 2.1133},
                               {-0.6131, 0.3719, -1.4467, -0.2853, 0.8261, -2.3177},
                               {0.4177, -1.2911, 0.6683, -0.7346, -1.8852, 0.2238},
                               {C(0.41, 0.73), C(-0.57, 0.36), C(1.12, -0.48), C(-0.29, -0.91), C(0.83, 0.22), C(-1.36, 0.64)}};
    int valid = 0;
    const double t = all.empty() ? tol() : std::max(tol(), 1e-6);
    for (auto& row : pts) {
      std::map<std::string, C> env;
      size_t k = 0;
      for (auto& s : all) {
        env[s] = row[k % 6] + 0.0917 * double(k / 6);
        ++k;
      }
      C vx = eval(x, env, b), vy = eval(y, env, b);
      if (!std::isfinite(vx.real()) || !std::isfinite(vy.real()) || !std::isfinite(vx.imag()) || !std::isfinite(vy.imag())) {
        if (std::isnan(vx.real()) || std::isnan(vy.real())) continue;
        if (vx != vy) return false;
        ++valid;  // the same infinity
        if (all.empty()) break;
        continue;
      }
      if (!close(vx, vy, t)) return false;
      ++valid;
      if (all.empty()) break;
    }
    return valid > 0;
  }

  P rename(const P& n, const std::string& from, const std::string& to) {
    if (!n) return n;
    auto m = std::make_shared<Node>(*n);
    if (m->k == K::Sym && m->name == from) m->name = to;
    for (auto& c : m->a) c = rename(c, from, to);
    return m;
  }

  // Values as lists for set-like comparison: sets and ± expand into members.
  std::vector<P> members(const P& n) {
    std::vector<P> out;
    if (n->k == K::Set) {
      for (auto& c : n->a)
        for (auto& m : members(c)) out.push_back(m);
      return out;
    }
    for (auto& v : expand_pm(n, b)) out.push_back(v);
    return out;
  }

  bool simple_lhs(const P& n) {
    // x, a_{37}, f(x), V_1:V_2, |AB|, (p,q): names, not values
    if (!n) return false;
    std::set<std::string> s;
    symbols(n, s);
    if (s.empty()) return false;
    std::function<bool(const P&)> no_numbers = [&](const P& m) -> bool {
      if (!m) return true;
      if (m->k == K::Num) return m->exact && abs(m->q) == 1;
      if (m->k == K::Add || m->k == K::PM) return false;
      return std::all_of(m->a.begin(), m->a.end(), no_numbers);
    };
    return no_numbers(n);
  }

  // `x = value` (or a chain ending in a value) seen as the value.
  P value_of(const P& n) {
    if (n->k != K::Rel) return n;
    bool all_eq = std::all_of(n->ops.begin(), n->ops.end(), [](const std::string& s) { return s == "=" || s == "~"; });
    if (!all_eq) return n;
    // a ≈ b: the exact value before it; after a name, what follows
    for (size_t k = 0; k < n->ops.size(); ++k)
      if (n->ops[k] == "~") {
        if (simple_lhs(n->a[k])) return n->a[k + 1];
        if (k == 0) return n->a[0];
        auto head = std::make_shared<Node>(*n);
        head->a.assign(n->a.begin(), n->a.begin() + k + 1);
        head->ops.assign(n->ops.begin(), n->ops.begin() + k);
        return value_of(head);
      }
    if (n->a.size() >= 3 || simple_lhs(n->a[0])) {
      // \approx after a value: that value; after a name: what follows
      for (size_t k = 0; k < n->ops.size(); ++k)
        if (n->ops[k] == "~") return simple_lhs(n->a[k]) ? n->a[k + 1] : n->a[k];
      return n->a.back();
    }
    return n;
  }

  P last_of_equation(const P& n) {
    if (std::find(n->ops.begin(), n->ops.end(), "~") != n->ops.end()) return value_of(n);
    bool all_eq = std::all_of(n->ops.begin(), n->ops.end(), [](const std::string& s) { return s == "=" || s == "~"; });
    if (!all_eq) return n;
    return value_of(n)->k == K::Rel ? n->a.back() : value_of(n);
  }

  static std::string flip(const std::string& op) {
    if (op == "<") return ">";
    if (op == ">") return "<";
    if (op == "<=") return ">=";
    if (op == ">=") return "<=";
    return op;
  }

  // lhs - rhs of both relations proportional (positive factor for inequalities).
  bool relation_equal(const P& l1, const std::string& op1, const P& r1, const P& l2, std::string op2, const P& r2) {
    P d1 = bin(K::Add, l1, neg(r1)), d2 = bin(K::Add, l2, neg(r2));
    bool ineq = op1 != "=" && op1 != "!=";
    if (ineq) {
      if (op2 == op1) {
      } else if (flip(op2) == op1) {
        d2 = neg(d2);
      } else {
        return false;
      }
    } else if (op1 != op2) {
      return false;
    }
    std::set<std::string> s1, s2;
    symbols(d1, s1);
    symbols(d2, s2);
    if (s1 != s2) return false;
    if (s1.empty()) return scalar_equal(d1, d2);
    static const double pts[][6] = {{1.31, 2.17, 0.73, 1.92, 2.61, 1.13}, {0.87, 1.54, 2.33, 1.08, 0.66, 2.91},
                                    {2.26, 0.94, 1.61, 2.72, 1.37, 0.81}};
    double ratio = 0;
    int valid = 0;
    for (auto& row : pts) {
      std::map<std::string, C> env;
      size_t k = 0;
      for (auto& s : s1) env[s] = row[k++ % 6];
      C a = eval(d1, env, b), c = eval(d2, env, b);
      if (!std::isfinite(a.real()) || !std::isfinite(c.real())) continue;
      if (std::abs(c) < 1e-12) {
        if (std::abs(a) > 1e-9) return false;
        continue;
      }
      double r = (a / c).real();
      if (valid == 0) ratio = r;
      else if (std::fabs(r - ratio) > 1e-6 * std::max(1.0, std::fabs(ratio))) return false;
      ++valid;
    }
    if (valid == 0 || std::fabs(ratio) < 1e-12) return false;
    return !ineq || ratio > 0;
  }

  std::optional<P> chain_as_interval(const P& n) {
    // a < x < b (a, b without free symbols) -> the interval
    if (n->k != K::Rel || n->a.size() != 3) return std::nullopt;
    std::set<std::string> s0, s2;
    symbols(n->a[0], s0);
    symbols(n->a[2], s2);
    if (!s0.empty() || !s2.empty()) return std::nullopt;
    auto iv = mk(K::Interval);
    if ((n->ops[0] == "<" || n->ops[0] == "<=") && (n->ops[1] == "<" || n->ops[1] == "<=")) {
      iv->a = {n->a[0], n->a[2]};
      iv->lc = n->ops[0] == "<=";
      iv->rc = n->ops[1] == "<=";
      return iv;
    }
    if ((n->ops[0] == ">" || n->ops[0] == ">=") && (n->ops[1] == ">" || n->ops[1] == ">=")) {
      iv->a = {n->a[2], n->a[0]};
      iv->lc = n->ops[1] == ">=";
      iv->rc = n->ops[0] == ">=";
      return iv;
    }
    return std::nullopt;
  }

  bool text_equal(const std::string& x, const std::string& y) {
    auto norm = [](std::string s) {
      std::string out;
      for (char c : lower(s))
        if (!is_space(c) && c != '(' && c != ')' && c != '.') out += c;
      return out;
    };
    return norm(x) == norm(y);
  }

  std::string as_text(const P& n) {
    if (n->k == K::Text) return n->name;
    if (n->k == K::Sym) return n->name;
    if (n->k == K::Mul) {  // "odd" parsed as o*d*d
      std::string l = as_text(n->a[0]), r = as_text(n->a[1]);
      if (!l.empty() && !r.empty()) return l + r;
    }
    return "";
  }

  bool equal(P x, P y) {
    b.tick();
    if (!x || !y) return false;
    // Single-member containers compare as their member.
    auto unwrap = [](P n) {
      while ((n->k == K::Tuple || n->k == K::Set) && n->a.size() == 1) n = n->a[0];
      return n;
    };
    x = unwrap(x);
    y = unwrap(y);
    // `x = value` against a value. The prediction's equation gives its last member; the
    // reference's only when its left side names something (k = 1, (p,q) = (3,2)) or it is a chain.
    if (x->k == K::Rel && y->k != K::Rel && y->k != K::Interval) x = last_of_equation(x);
    if (y->k == K::Rel && x->k != K::Rel && x->k != K::Interval) y = value_of(y);
    // Text: compare as words.
    if (x->k == K::Text || y->k == K::Text) {
      std::string tx = as_text(x), ty = as_text(y);
      return !tx.empty() && !ty.empty() && text_equal(tx, ty);
    }
    if (x->k == K::Rel && y->k == K::Rel) {
      if (x->a.size() == 2 && y->a.size() == 2 && relation_equal(x->a[0], x->ops[0], x->a[1], y->a[0], y->ops[0], y->a[1]))
        return true;
      P vx = value_of(x), vy = value_of(y);
      if (vx->k != K::Rel && vy->k != K::Rel) return equal(vx, vy);
      if (vx->k == K::Rel && vy->k == K::Rel && vx->a.size() == 2 && vy->a.size() == 2)
        return relation_equal(vx->a[0], vx->ops[0], vx->a[1], vy->a[0], vy->ops[0], vy->a[1]);
      if (x->a.size() == y->a.size() && x->ops == y->ops) {
        for (size_t k = 0; k < x->a.size(); ++k)
          if (!equal(x->a[k], y->a[k])) return false;
        return true;
      }
      // equation chains: compare first = last
      if (x->a.size() >= 2 && y->a.size() >= 2 &&
          std::all_of(x->ops.begin(), x->ops.end(), [](auto& s) { return s == "="; }) &&
          std::all_of(y->ops.begin(), y->ops.end(), [](auto& s) { return s == "="; }))
        return relation_equal(x->a.front(), "=", x->a.back(), y->a.front(), "=", y->a.back());
      return false;
    }
    if (x->k == K::Rel || y->k == K::Rel) {
      P r = x->k == K::Rel ? x : y, other = x->k == K::Rel ? y : x;
      if (auto iv = chain_as_interval(r)) return equal(*iv, other);
      return false;
    }
    // Sets (and lists, and ±): unordered, duplicates ignored.
    bool xs = x->k == K::Set || has_pm(x), ys = y->k == K::Set || has_pm(y);
    if (xs || ys) {
      if (x->k == K::Tuple || y->k == K::Tuple) {
        // {1,3} against (1,3): in order
        P s = x->k == K::Tuple ? y : x, t = x->k == K::Tuple ? x : y;
        auto ms = members(s);
        if (ms.size() != t->a.size()) return false;
        for (size_t k = 0; k < ms.size(); ++k)
          if (!equal(ms[k], t->a[k])) return false;
        return true;
      }
      auto mx = members(x), my = members(y);
      auto covers = [&](const std::vector<P>& p, const std::vector<P>& q) {
        for (auto& u : p) {
          bool found = false;
          for (auto& v : q)
            if (equal(u, v)) { found = true; break; }
          if (!found) return false;
        }
        return true;
      };
      return covers(mx, my) && covers(my, mx);
    }
    if (x->k == K::Tuple && y->k == K::Interval) std::swap(x, y);
    if (x->k == K::Interval && y->k == K::Tuple) {
      return y->paren_pair && !x->lc && !x->rc && equal(x->a[0], y->a[0]) && equal(x->a[1], y->a[1]);
    }
    if (x->k != y->k) {
      if (scalar(x) && scalar(y)) return scalar_equal(x, y);
      if (x->k == K::Matrix && y->k == K::Tuple) std::swap(x, y);
      if (x->k == K::Tuple && y->k == K::Matrix && (y->cols == 1 || y->rows == 1) && x->a.size() == y->a.size()) {
        for (size_t k = 0; k < x->a.size(); ++k)
          if (!equal(x->a[k], y->a[k])) return false;
        return true;
      }
      return false;
    }
    switch (x->k) {
      case K::Tuple:
        if (x->a.size() != y->a.size()) return false;
        for (size_t k = 0; k < x->a.size(); ++k)
          if (!equal(x->a[k], y->a[k])) return false;
        return true;
      case K::Interval:
        return x->lc == y->lc && x->rc == y->rc && equal(x->a[0], y->a[0]) && equal(x->a[1], y->a[1]);
      case K::Matrix:
        if (x->rows != y->rows || x->cols != y->cols) return false;
        for (size_t k = 0; k < x->a.size(); ++k)
          if (!equal(x->a[k], y->a[k])) return false;
        return true;
      default:
        if (scalar(x) && scalar(y)) return scalar_equal(x, y);
        return false;
    }
  }
};

// Unions: parsed from "A \cup B" at the top of a candidate.
P parse_with_unions(const std::string& s, bool comma_decimal, Budget& b) {
  std::vector<std::string> parts;
  size_t start = 0, p;
  while ((p = s.find("\\cup", start)) != std::string::npos) {
    parts.push_back(s.substr(start, p - start));
    start = p + 4;
  }
  parts.push_back(s.substr(start));
  if (parts.size() == 1) return parse_answer(s, comma_decimal, b);
  auto u = mk(K::Set);  // a union of intervals compares like a set of its pieces
  for (auto& part : parts) {
    std::string q = part;
    // "x \in (2,12) \cup (12,102)": drop the membership prefix
    size_t in = q.find("\\in");
    while (in != std::string::npos && in + 3 < q.size() && is_alpha(q[in + 3])) in = q.find("\\in", in + 3);  // not \infty
    if (in != std::string::npos && u->a.empty()) q = q.substr(in + 3);
    P n = parse_answer(q, comma_decimal, b);
    if (!n) throw ParseError{};
    u->a.push_back(n);
  }
  return u;
}

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
    if (!command && w.size() >= 3 && !ok.count(w) && !kUnitWords.count(w)) return true;
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

// Multiple choice: the letter a text chooses.
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

struct Parsed {
  P node;
  std::string text;
};

// Parses one candidate answer; nullptr when it is not one.
P try_parse(const std::string& text, bool comma_decimal, Budget& b) {
  try {
    return parse_with_unions(text, comma_decimal, b);
  } catch (const ParseError&) {
  } catch (const std::invalid_argument&) {
  } catch (const std::out_of_range&) {
  } catch (const std::runtime_error&) {
  }
  return nullptr;
}

Parsed extract_and_parse(const std::string& text, const MathCheckOptions& o, Budget& b) {
  auto cands = candidates(text, o);
  for (size_t k = cands.size(); k-- > 0;)
    if (P n = try_parse(cands[k].text, cands[k].comma_decimal, b)) return {n, trim(cands[k].text)};
  return {nullptr, ""};
}

// A reference is usually the answer itself, written bare as MATH-500's `answer` column and most
// datasets' answer columns write it: "[2,5)", "\text{Tuesday}", "\{3,1,2\}", a pmatrix. Searching
// it like a model's text would find the plain number 5 in "[2,5)" (or read "2,5" as a decimal
// comma), so a short reference that is not prose is parsed whole first. A worked solution (with a
// \boxed{}, or prose) goes through extraction like a prediction.
Parsed parse_reference(const std::string& reference, const MathCheckOptions& o, Budget& b) {
  if (auto whole = whole_answer(reference); whole && o.latex)
    if (P n = try_parse(*whole, false, b)) return {n, *whole};
  return extract_and_parse(reference, o, b);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
std::string hendrycks_normalize(const std::string& in) {
  std::string s = in;
  auto replace_all = [&](const std::string& from, const std::string& to) {
    size_t p = 0;
    while ((p = s.find(from, p)) != std::string::npos) {
      s.replace(p, from.size(), to);
      p += to.size();
    }
  };
  replace_all("\n", "");
  replace_all("\\!", "");
  replace_all("\\\\", "\\");
  replace_all("tfrac", "frac");
  replace_all("dfrac", "frac");
  replace_all("\\left", "");
  replace_all("\\right", "");
  replace_all("^{\\circ}", "");
  replace_all("^\\circ", "");
  replace_all("\\$", "");
  // units: "\text{ " to the end
  {
    size_t p = s.find("\\text{ ");
    if (p != std::string::npos) s = s.substr(0, p);
  }
  replace_all("\\%", "");
  replace_all("%", "");
  replace_all(" .", " 0.");
  replace_all("{.", "{0.");
  if (s.empty()) return s;
  if (s[0] == '.') s = "0" + s;
  // "k = ..." with a short left side
  {
    size_t p = s.find('=');
    if (p != std::string::npos && s.find('=', p + 1) == std::string::npos && p <= 2) s = s.substr(p + 1);
  }
  // \sqrt3 -> \sqrt{3}
  {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      out += s[i];
      if (at(s, i, "\\sqrt") && i + 5 < s.size() && s[i + 5] != '{') {
        out += "sqrt{";
        out += s[i + 5];
        out += "}";
        i += 5;
      }
    }
    s = out;
  }
  replace_all(" ", "");
  // \frac12 -> \frac{1}{2}
  {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      if (at(s, i, "\\frac")) {
        out += "\\frac";
        i += 5;
        for (int arg = 0; arg < 2 && i < s.size(); ++arg) {
          if (s[i] == '{') {
            size_t e = close_brace(s, i);
            if (e == std::string::npos) e = s.size() - 1;
            out += s.substr(i, e - i + 1);
            i = e + 1;
          } else {
            out += "{";
            out += s[i];
            out += "}";
            ++i;
          }
        }
        continue;
      }
      out += s[i++];
    }
    s = out;
  }
  if (s == "0.5") s = "\\frac{1}{2}";
  // a/b with integers -> \frac{a}{b}
  {
    size_t p = s.find('/');
    if (p != std::string::npos && s.find('/', p + 1) == std::string::npos) {
      std::string a = s.substr(0, p), bb = s.substr(p + 1);
      if (!a.empty() && !bb.empty() && std::all_of(a.begin(), a.end(), is_digit) && std::all_of(bb.begin(), bb.end(), is_digit))
        s = "\\frac{" + a + "}{" + bb + "}";
    }
  }
  return s;
}

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
    Checker c{o, b};
    v.correct = c.equal(pred.node, gold.node);
  } catch (const BudgetExceeded&) {
    v.correct = false;
    v.note = "budget exceeded";
  }
  return v;
}

}  // namespace grpo::rewards

#include "rewards/math/equivalence.h"

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

#include "rewards/math/evaluate.h"

namespace grpo::rewards::math {

namespace {

struct Checker {
  const MathCheckOptions& o;
  Budget& b;
  double tol() const { return std::pow(10.0, -o.precision); }

  bool close(Complex x, Complex y, double t) const {
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
  std::optional<Exact> exact_value(const ExprPtr& n) {
    b.tick();
    if (!n) return std::nullopt;
    if (n->kind == Kind::Number) {
      if (!n->exact) return std::nullopt;
      return Exact{n->q, n->decimal};
    }
    if (n->kind != Kind::Add && n->kind != Kind::Mul && n->kind != Kind::Pow) return std::nullopt;
    auto x = exact_value(n->args[0]);
    if (!x) return std::nullopt;
    auto y = exact_value(n->args[1]);
    if (!y) return std::nullopt;
    Exact r{0, x->decimal || y->decimal};
    if (n->kind == Kind::Add) {
      r.value = x->value + y->value;
    } else if (n->kind == Kind::Mul) {
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
  bool scalar_equal(const ExprPtr& x, const ExprPtr& y) {
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
    static const Complex pts[][6] = {{1.7312, 2.2187, 1.9043, 2.6511, 1.8326, 2.4129},
                               {2.8143, 1.6257, 2.3781, 1.7719, 2.9347, 2.1133},
                               {-0.6131, 0.3719, -1.4467, -0.2853, 0.8261, -2.3177},
                               {0.4177, -1.2911, 0.6683, -0.7346, -1.8852, 0.2238},
                               {Complex(0.41, 0.73), Complex(-0.57, 0.36), Complex(1.12, -0.48), Complex(-0.29, -0.91), Complex(0.83, 0.22), Complex(-1.36, 0.64)}};
    int valid = 0;
    const double t = all.empty() ? tol() : std::max(tol(), 1e-6);
    for (auto& row : pts) {
      std::map<std::string, Complex> env;
      size_t k = 0;
      for (auto& s : all) {
        env[s] = row[k % 6] + 0.0917 * double(k / 6);
        ++k;
      }
      Complex vx = eval(x, env, b), vy = eval(y, env, b);
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

  ExprPtr rename(const ExprPtr& n, const std::string& from, const std::string& to) {
    if (!n) return n;
    auto m = std::make_shared<Expr>(*n);
    if (m->kind == Kind::Symbol && m->name == from) m->name = to;
    for (auto& c : m->args) c = rename(c, from, to);
    return m;
  }

  // Values as lists for set-like comparison: sets and ± expand into members.
  std::vector<ExprPtr> members(const ExprPtr& n) {
    std::vector<ExprPtr> out;
    if (n->kind == Kind::Set) {
      for (auto& c : n->args)
        for (auto& m : members(c)) out.push_back(m);
      return out;
    }
    for (auto& v : expand_pm(n, b)) out.push_back(v);
    return out;
  }

  bool simple_lhs(const ExprPtr& n) {
    // x, a_{37}, f(x), V_1:V_2, |AB|, (p,q): names, not values
    if (!n) return false;
    std::set<std::string> s;
    symbols(n, s);
    if (s.empty()) return false;
    std::function<bool(const ExprPtr&)> no_numbers = [&](const ExprPtr& m) -> bool {
      if (!m) return true;
      if (m->kind == Kind::Number) return m->exact && abs(m->q) == 1;
      if (m->kind == Kind::Add || m->kind == Kind::PlusMinus) return false;
      return std::all_of(m->args.begin(), m->args.end(), no_numbers);
    };
    return no_numbers(n);
  }

  // `x = value` (or a chain ending in a value) seen as the value.
  ExprPtr value_of(const ExprPtr& n) {
    if (n->kind != Kind::Relation) return n;
    bool all_eq = std::all_of(n->ops.begin(), n->ops.end(), [](const std::string& s) { return s == "=" || s == "~"; });
    if (!all_eq) return n;
    // a ≈ b: the exact value before it; after a name, what follows
    for (size_t k = 0; k < n->ops.size(); ++k)
      if (n->ops[k] == "~") {
        if (simple_lhs(n->args[k])) return n->args[k + 1];
        if (k == 0) return n->args[0];
        auto head = std::make_shared<Expr>(*n);
        head->args.assign(n->args.begin(), n->args.begin() + k + 1);
        head->ops.assign(n->ops.begin(), n->ops.begin() + k);
        return value_of(head);
      }
    if (n->args.size() >= 3 || simple_lhs(n->args[0])) {
      // \approx after a value: that value; after a name: what follows
      for (size_t k = 0; k < n->ops.size(); ++k)
        if (n->ops[k] == "~") return simple_lhs(n->args[k]) ? n->args[k + 1] : n->args[k];
      return n->args.back();
    }
    return n;
  }

  ExprPtr last_of_equation(const ExprPtr& n) {
    if (std::find(n->ops.begin(), n->ops.end(), "~") != n->ops.end()) return value_of(n);
    bool all_eq = std::all_of(n->ops.begin(), n->ops.end(), [](const std::string& s) { return s == "=" || s == "~"; });
    if (!all_eq) return n;
    return value_of(n)->kind == Kind::Relation ? n->args.back() : value_of(n);
  }

  static std::string flip(const std::string& op) {
    if (op == "<") return ">";
    if (op == ">") return "<";
    if (op == "<=") return ">=";
    if (op == ">=") return "<=";
    return op;
  }

  // lhs - rhs of both relations proportional (positive factor for inequalities).
  bool relation_equal(const ExprPtr& l1, const std::string& op1, const ExprPtr& r1, const ExprPtr& l2, std::string op2, const ExprPtr& r2) {
    ExprPtr d1 = bin(Kind::Add, l1, neg(r1)), d2 = bin(Kind::Add, l2, neg(r2));
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
      std::map<std::string, Complex> env;
      size_t k = 0;
      for (auto& s : s1) env[s] = row[k++ % 6];
      Complex a = eval(d1, env, b), c = eval(d2, env, b);
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

  std::optional<ExprPtr> chain_as_interval(const ExprPtr& n) {
    // a < x < b (a, b without free symbols) -> the interval
    if (n->kind != Kind::Relation || n->args.size() != 3) return std::nullopt;
    std::set<std::string> s0, s2;
    symbols(n->args[0], s0);
    symbols(n->args[2], s2);
    if (!s0.empty() || !s2.empty()) return std::nullopt;
    auto iv = mk(Kind::Interval);
    if ((n->ops[0] == "<" || n->ops[0] == "<=") && (n->ops[1] == "<" || n->ops[1] == "<=")) {
      iv->args = {n->args[0], n->args[2]};
      iv->lc = n->ops[0] == "<=";
      iv->rc = n->ops[1] == "<=";
      return iv;
    }
    if ((n->ops[0] == ">" || n->ops[0] == ">=") && (n->ops[1] == ">" || n->ops[1] == ">=")) {
      iv->args = {n->args[2], n->args[0]};
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

  std::string as_text(const ExprPtr& n) {
    if (n->kind == Kind::Text) return n->name;
    if (n->kind == Kind::Symbol) return n->name;
    if (n->kind == Kind::Mul) {  // "odd" parsed as o*d*d
      std::string l = as_text(n->args[0]), r = as_text(n->args[1]);
      if (!l.empty() && !r.empty()) return l + r;
    }
    return "";
  }

  bool equal(ExprPtr x, ExprPtr y) {
    b.tick();
    if (!x || !y) return false;
    // Single-member containers compare as their member.
    auto unwrap = [](ExprPtr n) {
      while ((n->kind == Kind::Tuple || n->kind == Kind::Set) && n->args.size() == 1) n = n->args[0];
      return n;
    };
    x = unwrap(x);
    y = unwrap(y);
    // `x = value` against a value. The prediction's equation gives its last member; the
    // reference's only when its left side names something (k = 1, (p,q) = (3,2)) or it is a chain.
    if (x->kind == Kind::Relation && y->kind != Kind::Relation && y->kind != Kind::Interval) x = last_of_equation(x);
    if (y->kind == Kind::Relation && x->kind != Kind::Relation && x->kind != Kind::Interval) y = value_of(y);
    // Text: compare as words.
    if (x->kind == Kind::Text || y->kind == Kind::Text) {
      std::string tx = as_text(x), ty = as_text(y);
      return !tx.empty() && !ty.empty() && text_equal(tx, ty);
    }
    if (x->kind == Kind::Relation && y->kind == Kind::Relation) {
      if (x->args.size() == 2 && y->args.size() == 2 && relation_equal(x->args[0], x->ops[0], x->args[1], y->args[0], y->ops[0], y->args[1]))
        return true;
      ExprPtr vx = value_of(x), vy = value_of(y);
      if (vx->kind != Kind::Relation && vy->kind != Kind::Relation) return equal(vx, vy);
      if (vx->kind == Kind::Relation && vy->kind == Kind::Relation && vx->args.size() == 2 && vy->args.size() == 2)
        return relation_equal(vx->args[0], vx->ops[0], vx->args[1], vy->args[0], vy->ops[0], vy->args[1]);
      if (x->args.size() == y->args.size() && x->ops == y->ops) {
        for (size_t k = 0; k < x->args.size(); ++k)
          if (!equal(x->args[k], y->args[k])) return false;
        return true;
      }
      // equation chains: compare first = last
      if (x->args.size() >= 2 && y->args.size() >= 2 &&
          std::all_of(x->ops.begin(), x->ops.end(), [](auto& s) { return s == "="; }) &&
          std::all_of(y->ops.begin(), y->ops.end(), [](auto& s) { return s == "="; }))
        return relation_equal(x->args.front(), "=", x->args.back(), y->args.front(), "=", y->args.back());
      return false;
    }
    if (x->kind == Kind::Relation || y->kind == Kind::Relation) {
      ExprPtr r = x->kind == Kind::Relation ? x : y, other = x->kind == Kind::Relation ? y : x;
      if (auto iv = chain_as_interval(r)) return equal(*iv, other);
      return false;
    }
    // Sets (and lists, and ±): unordered, duplicates ignored.
    bool xs = x->kind == Kind::Set || has_pm(x), ys = y->kind == Kind::Set || has_pm(y);
    if (xs || ys) {
      if (x->kind == Kind::Tuple || y->kind == Kind::Tuple) {
        // {1,3} against (1,3): in order
        ExprPtr s = x->kind == Kind::Tuple ? y : x, t = x->kind == Kind::Tuple ? x : y;
        auto ms = members(s);
        if (ms.size() != t->args.size()) return false;
        for (size_t k = 0; k < ms.size(); ++k)
          if (!equal(ms[k], t->args[k])) return false;
        return true;
      }
      auto mx = members(x), my = members(y);
      auto covers = [&](const std::vector<ExprPtr>& p, const std::vector<ExprPtr>& q) {
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
    if (x->kind == Kind::Tuple && y->kind == Kind::Interval) std::swap(x, y);
    if (x->kind == Kind::Interval && y->kind == Kind::Tuple) {
      return y->paren_pair && !x->lc && !x->rc && equal(x->args[0], y->args[0]) && equal(x->args[1], y->args[1]);
    }
    if (x->kind != y->kind) {
      if (scalar(x) && scalar(y)) return scalar_equal(x, y);
      if (x->kind == Kind::Matrix && y->kind == Kind::Tuple) std::swap(x, y);
      if (x->kind == Kind::Tuple && y->kind == Kind::Matrix && (y->cols == 1 || y->rows == 1) && x->args.size() == y->args.size()) {
        for (size_t k = 0; k < x->args.size(); ++k)
          if (!equal(x->args[k], y->args[k])) return false;
        return true;
      }
      return false;
    }
    switch (x->kind) {
      case Kind::Tuple:
        if (x->args.size() != y->args.size()) return false;
        for (size_t k = 0; k < x->args.size(); ++k)
          if (!equal(x->args[k], y->args[k])) return false;
        return true;
      case Kind::Interval:
        return x->lc == y->lc && x->rc == y->rc && equal(x->args[0], y->args[0]) && equal(x->args[1], y->args[1]);
      case Kind::Matrix:
        if (x->rows != y->rows || x->cols != y->cols) return false;
        for (size_t k = 0; k < x->args.size(); ++k)
          if (!equal(x->args[k], y->args[k])) return false;
        return true;
      default:
        if (scalar(x) && scalar(y)) return scalar_equal(x, y);
        return false;
    }
  }
};

}  // namespace

bool equivalent(const ExprPtr& prediction, const ExprPtr& reference, const MathCheckOptions& options, Budget& budget) {
  Checker c{options, budget};
  return c.equal(prediction, reference);
}

}  // namespace grpo::rewards::math

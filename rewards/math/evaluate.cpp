#include "rewards/math/evaluate.h"

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

Complex eval(const ExprPtr& n, const std::map<std::string, Complex>& env, Budget& b) {
  b.tick();
  switch (n->kind) {
    case Kind::Number: return n->num;
    case Kind::Symbol: {
      if (n->name == "pi") return M_PI;
      if (n->name == "e") return M_E;
      if (n->name == "oo") return std::numeric_limits<double>::infinity();
      auto it = env.find(n->name);
      return it == env.end() ? Complex(kNaN) : it->second;
    }
    case Kind::Add:
    case Kind::Mul: {
      Complex x = eval(n->args[0], env, b), y = eval(n->args[1], env, b);
      // Real operands in real arithmetic: -1 * inf is -inf, not (-inf, nan) as complex gives.
      if (x.imag() == 0 && y.imag() == 0) return n->kind == Kind::Add ? x.real() + y.real() : x.real() * y.real();
      return n->kind == Kind::Add ? x + y : x * y;
    }
    case Kind::Pow: {
      Complex x = eval(n->args[0], env, b), y = eval(n->args[1], env, b);
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
    case Kind::Factorial: {
      Complex x = eval(n->args[0], env, b);
      if (x.imag() != 0 || x.real() < 0 || x.real() > 170) return kNaN;
      return std::tgamma(x.real() + 1);
    }
    case Kind::Function: {
      if (n->name == "binom") {
        Complex nn = eval(n->args[0], env, b), kk = eval(n->args[1], env, b);
        return std::tgamma(nn.real() + 1) / (std::tgamma(kk.real() + 1) * std::tgamma(nn.real() - kk.real() + 1));
      }
      Complex x = eval(n->args[0], env, b);
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
        if (n->args.size() > 1 && n->args[1]) return std::log(x) / std::log(eval(n->args[1], env, b));
        return std::log(x);  // natural log, as sympy reads \log
      }
      return kNaN;
    }
    default: return kNaN;
  }
}

void symbols(const ExprPtr& n, std::set<std::string>& out) {
  if (!n) return;
  if (n->kind == Kind::Symbol && n->name != "pi" && n->name != "e" && n->name != "oo") out.insert(n->name);
  for (auto& c : n->args) symbols(c, out);
}

bool scalar(const ExprPtr& n) {
  if (!n) return false;
  switch (n->kind) {
    case Kind::Number: case Kind::Symbol: return true;
    case Kind::Add: case Kind::Mul: case Kind::Pow: case Kind::Function: case Kind::Factorial:
      return std::all_of(n->args.begin(), n->args.end(), [](const ExprPtr& c) { return !c || scalar(c); });
    default: return false;
  }
}

bool has_pm(const ExprPtr& n) {
  if (!n) return false;
  if (n->kind == Kind::PlusMinus) return true;
  return std::any_of(n->args.begin(), n->args.end(), has_pm);
}

// a ± b -> {a + b, a - b}, through any enclosing arithmetic (at most 16 variants).
std::vector<ExprPtr> expand_pm(const ExprPtr& n, Budget& b) {
  b.tick();
  if (!n || !has_pm(n)) return {n};
  if (n->kind == Kind::PlusMinus) {
    std::vector<ExprPtr> out;
    for (auto& x : expand_pm(n->args[0], b))
      for (auto& y : expand_pm(n->args[1], b)) {
        out.push_back(bin(Kind::Add, x, y));
        out.push_back(bin(Kind::Add, x, neg(y)));
      }
    if (out.size() > 16) throw BudgetExceeded{};
    return out;
  }
  std::vector<std::vector<ExprPtr>> parts;
  for (auto& c : n->args) parts.push_back(expand_pm(c, b));
  std::vector<std::vector<ExprPtr>> combos{{}};
  for (auto& alts : parts) {
    std::vector<std::vector<ExprPtr>> next;
    for (auto& pre : combos)
      for (auto& alt : alts) {
        auto v = pre;
        v.push_back(alt);
        next.push_back(v);
      }
    combos = std::move(next);
    if (combos.size() > 16) throw BudgetExceeded{};
  }
  std::vector<ExprPtr> out;
  for (auto& cmb : combos) {
    auto m = std::make_shared<Expr>(*n);
    m->args = cmb;
    out.push_back(m);
  }
  return out;
}

}  // namespace grpo::rewards::math

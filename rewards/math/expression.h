// The expression tree every parsed answer becomes: numbers (exact GMP rationals when written
// exactly), symbols, arithmetic, functions, and the answer shapes (tuples, sets, intervals, unions,
// matrices, relations, ±, text).
#pragma once

#include <gmpxx.h>

#include <memory>
#include <string>
#include <vector>

namespace grpo::rewards::math {

struct Expr;
using ExprPtr = std::shared_ptr<Expr>;
enum class Kind { Number, Symbol, Add, Mul, Pow, Function, Factorial, PlusMinus, Tuple, Set, Interval, Union, Matrix, Relation, Text };
struct Expr {
  Kind kind;
  double num = 0;          // Num
  bool exact = false;      // Num: `q` holds the value exactly (any length: GMP)
  bool decimal = false;    // Num: written with a decimal point (0.333 may stand for 1/3, rounded)
  mpq_class q;
  std::string name;        // Sym, Func, Text
  std::vector<ExprPtr> args;     // children
  std::vector<std::string> ops;  // Rel: ops[i] between a[i] and a[i+1] ("=", "<", "<=", ">", ">=", "!=")
  bool lc = false, rc = false;   // Interval ends closed
  int rows = 0, cols = 0;        // Matrix
  bool paren_pair = false;       // Tuple written (a, b): may be an open interval
};
inline ExprPtr mk(Kind k) { auto n = std::make_shared<Expr>(); n->kind = k; return n; }
inline ExprPtr num(double v) { auto n = mk(Kind::Number); n->num = v; return n; }
inline ExprPtr rational(mpq_class v, bool decimal = false) {
  auto n = mk(Kind::Number);
  v.canonicalize();
  n->q = v; n->exact = true; n->decimal = decimal; n->num = v.get_d();
  return n;
}
inline ExprPtr rational(long p, long q) { return rational(mpq_class(mpz_class(p), mpz_class(q))); }
inline ExprPtr sym(const std::string& s) { auto n = mk(Kind::Symbol); n->name = s; return n; }
inline ExprPtr bin(Kind k, ExprPtr x, ExprPtr y) { auto n = mk(k); n->args = {x, y}; return n; }
inline ExprPtr neg(ExprPtr x) { return bin(Kind::Mul, rational(-1, 1), x); }
inline ExprPtr inv(ExprPtr x) { return bin(Kind::Pow, x, rational(-1, 1)); }

}  // namespace grpo::rewards::math

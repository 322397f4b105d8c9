// Expressions evaluated at a point (complex arithmetic; real odd roots of negative reals), and the
// questions the equivalence checks ask of them.
#pragma once

#include <complex>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "rewards/math/expression.h"
#include "rewards/math/scan.h"

namespace grpo::rewards::math {

using Complex = std::complex<double>;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The value of `n` with its free symbols set from `env` (NaN when one is missing or undefined).
Complex eval(const ExprPtr& n, const std::map<std::string, Complex>& env, Budget& budget);
// The free symbols of `n` (not pi, e, oo).
void symbols(const ExprPtr& n, std::set<std::string>& out);
// Whether `n` is a plain scalar expression (numbers, symbols, arithmetic, functions).
bool scalar(const ExprPtr& n);
bool has_pm(const ExprPtr& n);
// a ± b -> {a + b, a - b}, through any enclosing arithmetic (at most 16 variants).
std::vector<ExprPtr> expand_pm(const ExprPtr& n, Budget& budget);

}  // namespace grpo::rewards::math

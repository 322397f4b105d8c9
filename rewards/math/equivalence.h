// Whether a predicted answer equals a reference answer: exact rationals exactly, decimals within the
// tolerance, symbolic expressions at real and complex points, tuples in order, sets without order,
// intervals with their ends, unions, ± as a pair of values, matrices, equations up to sides and
// scale, inequalities up to direction, `x = value` against a value, text.
#pragma once

#include "rewards/math/checker.h"
#include "rewards/math/expression.h"
#include "rewards/math/scan.h"

namespace grpo::rewards::math {

bool equivalent(const ExprPtr& prediction, const ExprPtr& reference, const MathCheckOptions& options, Budget& budget);

}  // namespace grpo::rewards::math

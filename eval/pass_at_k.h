// pass@k, the unbiased estimator of Chen et al. (2021): with n samples of which c are correct,
// 1 - C(n - c, k) / C(n, k), computed as a product so that it never overflows.
#pragma once

#include <cstdint>
#include <stdexcept>

namespace grpo::eval {

inline double pass_at_k(int64_t n, int64_t c, int64_t k) {
  if (k < 1 || k > n || c < 0 || c > n) throw std::invalid_argument("pass_at_k: need 1 <= k <= n and 0 <= c <= n");
  if (n - c < k) return 1.0;
  double miss = 1.0;  // C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
  for (int64_t i = n - c + 1; i <= n; ++i) miss *= 1.0 - (double)k / (double)i;
  return 1.0 - miss;
}

}  // namespace grpo::eval

// The chi-square test's p-value, for tests of sampled distributions.
#pragma once

#include <cmath>

// Upper regularised incomplete gamma Q(a, x): the chi-square survival function is Q(df/2, x/2).
inline double gamma_q(double a, double x) {
  if (x < a + 1) {  // series for P
    double sum = 1 / a, term = sum;
    for (int n = 1; n < 1000; ++n) {
      term *= x / (a + n);
      sum += term;
      if (term < sum * 1e-15) break;
    }
    return 1 - sum * std::exp(-x + a * std::log(x) - std::lgamma(a));
  }
  // Continued fraction for Q (modified Lentz).
  double b = x + 1 - a, c = 1e300, d = 1 / b, h = d;
  for (int i = 1; i < 1000; ++i) {
    double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (std::fabs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (std::fabs(c) < 1e-300) c = 1e-300;
    d = 1 / d;
    double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < 1e-15) break;
  }
  return std::exp(-x + a * std::log(x) - std::lgamma(a)) * h;
}

#include <vector>

// Pearson's chi-square p-value of `count` (observed per category, summing to n) against the
// probabilities `expect`; categories expected fewer than 5 times are pooled into one bin. A category
// of probability 0 that was observed gives 0. `bins` receives the number of bins tested.
inline double chi_square_pvalue(const std::vector<double>& count, const std::vector<double>& expect, int* bins = nullptr) {
  double n = 0;
  for (double c : count) n += c;
  double chi2 = 0, pooled_e = 0, pooled_o = 0;
  int k = 0;
  for (size_t i = 0; i < count.size(); ++i) {
    if (expect[i] == 0) {
      if (count[i] > 0) return 0;
      continue;
    }
    const double e = expect[i] * n;
    if (e < 5) {
      pooled_e += e;
      pooled_o += count[i];
      continue;
    }
    chi2 += (count[i] - e) * (count[i] - e) / e;
    ++k;
  }
  if (pooled_e > 0) {
    chi2 += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    ++k;
  }
  if (bins) *bins = k;
  return k < 2 ? 1.0 : gamma_q((k - 1) / 2.0, chi2 / 2);
}

// The batch-invariant CPU product (model/invariant_kernels.h matmul_nt) against ATen's own bf16
// product on the same inputs: ms per call and GFLOP/s for a few row counts, as JSON lines.
//   bench_invariant [--k 512] [--n 1024] [--rows 1,16,64,256]
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>

#include "model/invariant_kernels.h"

namespace {

// Seconds per call of f, over enough calls for about a quarter of a second (after one warm-up).
template <typename F>
double seconds_per_call(F f) {
  f();
  int64_t n = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double dt = 0;
  do {
    f();
    ++n;
    dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (dt < 0.25);
  return dt / n;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"batch-invariant CPU product benchmark"};
  int64_t K = 512, N = 1024;
  std::string rows = "1,16,64,256";
  app.add_option("--k", K);
  app.add_option("--n", N);
  app.add_option("--rows", rows);
  CLI11_PARSE(app, argc, argv);
  at::manual_seed(0);
  const at::Tensor w = at::randn({N, K}).to(at::kBFloat16);
  std::stringstream list(rows);
  for (std::string item; std::getline(list, item, ',');) {
    const int64_t M = std::stoll(item);
    const at::Tensor x = at::randn({M, K}).to(at::kBFloat16);
    const double inv = seconds_per_call([&] { grpo::model::invariant::matmul_nt(x, w); });
    const double lib = seconds_per_call([&] { at::matmul(x, w.t()); });
    const double flop = 2.0 * M * N * K;
    printf("{\"kind\": \"invariant_matmul\", \"rows\": %lld, \"n\": %lld, \"k\": %lld, \"invariant_ms\": %.4f, "
           "\"invariant_gflops\": %.2f, \"aten_bf16_ms\": %.4f, \"slowdown\": %.2f}\n",
           (long long)M, (long long)N, (long long)K, inv * 1e3, flop / inv / 1e9, lib * 1e3, inv / lib);
  }
  return 0;
}

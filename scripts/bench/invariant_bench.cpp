// The batch-invariant product (model/invariant_kernels.h matmul_nt, and grouped_matmul_nt over
// --groups weights) against ATen's own bf16 product on the same inputs: ms per call and GFLOP/s
// for a few row counts, as JSON lines (kind "invariant_matmul"). On CUDA, 1,024 rows or more take
// the wide kernel (invariant_gemm_cuda.h), fewer the decode kernel. A kernel on trial is timed
// too (set here around its calls), checked equal to the default's bits first: "staged_tiles" for
// grouped products of fewer rows, "narrow_columns" for plain products of 16 rows or fewer.
//   bench_invariant [--device cpu|cuda] [--k 512] [--n 1024] [--rows 1,16,64,256] [--groups 1]
// On CUDA the defaults are the V2-Lite shape's projections: K = N = 2048, 1 to 65,536 rows.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <sstream>
#include <string>

#include "model/invariant_kernels.h"
#include "model/kernel_trial.h"
#include "timing.h"

using at::Tensor;
namespace invariant = grpo::model::invariant;

int main(int argc, char** argv) {
  CLI::App app{"batch-invariant product benchmark"};
  std::string device = "cpu", rows;
  int64_t K = 0, N = 0, G = 1;
  app.add_option("--device", device)->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--k", K, "inner size (default 512 on the CPU, 2048 on CUDA)");
  app.add_option("--n", N, "output columns (default 1024 on the CPU, 2048 on CUDA)");
  app.add_option("--rows", rows, "row counts (default 1,16,64,256 on the CPU, 1,4,16,64,256,1024,4096,16384,65536 on CUDA)");
  app.add_option("--groups", G, "weights the rows are spread over at random (grouped_matmul_nt when above 1)");
  CLI11_PARSE(app, argc, argv);
  const bool cuda = device == "cuda";
  if (cuda && !torch::cuda::is_available()) {
    fprintf(stderr, "bench_invariant: no CUDA device\n");
    return 1;
  }
  if (K == 0) K = cuda ? 2048 : 512;
  if (N == 0) N = cuda ? 2048 : 1024;
  if (rows.empty()) rows = cuda ? "1,4,16,64,256,1024,4096,16384,65536" : "1,16,64,256";
  c10::NoGradGuard no_grad;
  at::manual_seed(0);
  const auto bf16 = at::TensorOptions().device(cuda ? at::kCUDA : at::kCPU).dtype(at::kBFloat16);
  const Tensor w = at::randn({G, N, K}, bf16);
  std::stringstream list(rows);
  for (std::string item; std::getline(list, item, ',');) {
    const int64_t M = std::stoll(item);
    const Tensor x = at::randn({M, K}, bf16);
    // Rows grouped by a random weight, as the routed experts' rows are; each weight's rows then in
    // one product of ATen's (the library's per-group form, for the baseline).
    Tensor order, counts;
    invariant::RowGroups groups, staged;
    if (G > 1) {
      Tensor group_of_row = at::randint(G, {M}, bf16.dtype(at::kLong));
      groups = invariant::group_rows(group_of_row, G);
      counts = at::bincount(group_of_row, {}, G).cpu();
      if (cuda && !groups.wide_tiles.defined()) {
        grpo::model::KernelTrialScope trial("staged_tiles");
        staged = invariant::group_rows(group_of_row, G);
      }
    }
    const Tensor xs = G > 1 ? x.index_select(0, groups.order) : x;
    auto product = [&] {
      return G > 1 ? invariant::grouped_matmul_nt(xs, w, groups, at::kBFloat16)
                   : invariant::matmul_nt(x, w[0], at::kBFloat16);
    };
    auto library = [&] {
      if (G == 1) return at::matmul(x, w[0].t());
      int64_t first = 0;
      Tensor out = at::empty({M, N}, bf16);
      for (int64_t e = 0; e < G; ++e) {
        const int64_t n = counts[e].item<int64_t>();
        if (n > 0) out.narrow(0, first, n).copy_(at::matmul(xs.narrow(0, first, n), w[e].t()));
        first += n;
      }
      return out;
    };
    const double flop = 2.0 * M * N * K;
    const double inv = grpo::bench::seconds_per_call(product, cuda);
    const double lib = grpo::bench::seconds_per_call(library, cuda);
    // The kernel on trial for this shape, if one applies: its time and whether its bits are the default's.
    std::string trial_fields;
    auto time_trial = [&](const char* name, auto&& trial_product, const std::string& extra) {
      const Tensor want = product();
      grpo::model::KernelTrialScope trial(name);
      const bool equal = at::equal(trial_product(), want);
      const double t = grpo::bench::seconds_per_call(trial_product, cuda);
      char buf[240];
      snprintf(buf, sizeof(buf), ", \"trial\": \"%s\", \"trial_ms\": %.4f, \"trial_gflops\": %.2f, \"trial_equal\": %s%s",
               name, t * 1e3, flop / t / 1e9, equal ? "true" : "false", extra.c_str());
      trial_fields = buf;
    };
    if (staged.order.defined())
      time_trial("staged_tiles", [&] { return invariant::grouped_matmul_nt(xs, w, staged, at::kBFloat16); },
                 ", \"trial_tile_rows\": " + std::to_string(staged.tile_rows));
    else if (cuda && G == 1 && M <= 16)
      time_trial("narrow_columns", product, "");
    printf("{\"kind\": \"invariant_matmul\", \"device\": \"%s\", \"rows\": %lld, \"groups\": %lld, \"n\": %lld, "
           "\"k\": %lld, \"invariant_ms\": %.4f, \"invariant_gflops\": %.2f, \"aten_bf16_ms\": %.4f, "
           "\"aten_bf16_gflops\": %.2f, \"slowdown\": %.2f%s}\n",
           device.c_str(), (long long)M, (long long)G, (long long)N, (long long)K, inv * 1e3, flop / inv / 1e9, lib * 1e3,
           flop / lib / 1e9, inv / lib, trial_fields.c_str());
    fflush(stdout);
  }
  return 0;
}

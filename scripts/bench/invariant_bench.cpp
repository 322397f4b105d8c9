// The batch-invariant product (model/invariant_kernels.h matmul_nt, and grouped_matmul_nt over
// --groups weights) against ATen's own bf16 product on the same inputs: ms per call and GFLOP/s
// for a few row counts, as JSON lines (kind "invariant_matmul"). On CUDA, 1,024 rows or more take
// the wide kernel (invariant_gemm_cuda.h), fewer the decode kernel. On CUDA a second form is timed
// too (set here around its calls), checked equal to the default's bits first: without the adopted
// "staged_tiles" for grouped products of fewer rows, without "narrow_columns" for plain products of
// 16 rows or fewer, and without "fp32_products" for fp32 weights (--fp32-weights: the router's,
// LoRA's; the baseline is then ATen's fp32 product).
//   bench_invariant [--device cpu|cuda] [--k 512] [--n 1024] [--rows 1,16,64,256] [--groups 1] [--fp32-weights]
// On CUDA the defaults are the V2-Lite shape's projections: K = N = 2048, 1 to 65,536 rows.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <optional>
#include <string>

#include "model/invariant_kernels.h"
#include "model/kernel_trial.h"
#include "number_list.h"
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
  bool fp32_weights = false;
  app.add_flag("--fp32-weights", fp32_weights, "fp32 weights (the router's, LoRA's): fp32 outputs, against ATen's fp32 product");
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
  const Tensor w = at::randn({G, N, K}, bf16.dtype(fp32_weights ? at::kFloat : at::kBFloat16));
  const auto round_to = fp32_weights ? std::optional<at::ScalarType>() : std::optional<at::ScalarType>(at::kBFloat16);
  for (const int64_t M : grpo::bench::parse_list(rows)) {
    const Tensor x = at::randn({M, K}, bf16);
    // Rows grouped by a random weight, as the routed experts' rows are; each weight's rows then in
    // one product of ATen's (the library's per-group form, for the baseline).
    Tensor order, counts;
    invariant::RowGroups groups, short_tiles;
    if (G > 1) {
      Tensor group_of_row = at::randint(G, {M}, bf16.dtype(at::kLong));
      groups = invariant::group_rows(group_of_row, G);
      counts = at::bincount(group_of_row, {}, G).cpu();
      if (cuda && !fp32_weights && !groups.wide_tiles.defined()) {
        grpo::model::KernelTrialScope without("-staged_tiles");
        short_tiles = invariant::group_rows(group_of_row, G);
      }
    }
    const Tensor xs = G > 1 ? x.index_select(0, groups.order) : x;
    auto product_over = [&](const invariant::RowGroups& g) {
      return G > 1 ? invariant::grouped_matmul_nt(xs, w, g, round_to) : invariant::matmul_nt(x, w[0], round_to);
    };
    auto product = [&] { return product_over(groups); };
    const Tensor xl = fp32_weights ? xs.to(at::kFloat) : xs;  // ATen's product takes one dtype
    auto library = [&] {
      if (G == 1) return at::matmul(xl, w[0].t());
      int64_t first = 0;
      Tensor out = at::empty({M, N}, xl.options());
      for (int64_t e = 0; e < G; ++e) {
        const int64_t n = counts[e].item<int64_t>();
        if (n > 0) out.narrow(0, first, n).copy_(at::matmul(xl.narrow(0, first, n), w[e].t()));
        first += n;
      }
      return out;
    };
    const double flop = 2.0 * M * N * K;
    const double inv = grpo::bench::seconds_per_call(product, cuda);
    const double lib = grpo::bench::seconds_per_call(library, cuda);
    // The other form for this shape, if one applies (GRPO_KERNEL_TRIAL `kernels`: an adopted kernel
    // turned off, or one on trial): its time and whether its bits are the default's.
    std::string other_fields;
    auto time_other = [&](const char* kernels, auto&& other_product, const std::string& extra) {
      const Tensor want = product();
      grpo::model::KernelTrialScope scope(kernels);
      const bool equal = at::equal(other_product(), want);
      const double t = grpo::bench::seconds_per_call(other_product, cuda);
      char buf[240];
      snprintf(buf, sizeof(buf), ", \"other\": \"%s\", \"other_ms\": %.4f, \"other_gflops\": %.2f, \"other_equal\": %s%s",
               kernels, t * 1e3, flop / t / 1e9, equal ? "true" : "false", extra.c_str());
      other_fields = buf;
    };
    if (cuda && fp32_weights)
      time_other("-fp32_products", product, "");
    else if (short_tiles.order.defined())
      time_other("-staged_tiles", [&] { return product_over(short_tiles); },
                 ", \"tile_rows\": " + std::to_string(groups.tile_rows));
    else if (cuda && G == 1 && M <= 16)
      time_other("-narrow_columns", product, "");
    printf("{\"kind\": \"invariant_matmul\", \"device\": \"%s\", \"rows\": %lld, \"groups\": %lld, \"n\": %lld, "
           "\"k\": %lld, \"weights\": \"%s\", \"invariant_ms\": %.4f, \"invariant_gflops\": %.2f, \"aten_ms\": %.4f, "
           "\"aten_gflops\": %.2f, \"slowdown\": %.2f%s}\n",
           device.c_str(), (long long)M, (long long)G, (long long)N, (long long)K, fp32_weights ? "fp32" : "bf16", inv * 1e3,
           flop / inv / 1e9, lib * 1e3, flop / lib / 1e9, inv / lib, other_fields.c_str());
    fflush(stdout);
  }
  return 0;
}

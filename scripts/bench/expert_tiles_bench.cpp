// The routed experts' products of a decode step alone: fused::grouped_tiles (on trial,
// "expert_tiles") against the grouped GEMM (at::_grouped_mm) on the same rows, at V2-Lite's gate_up
// (2816 x 2048) and down (2048 x 1408) over 64 experts, 6 a token. Bytes read per second (the
// weights of the experts with rows, the rows, the output) against the copy bandwidth measured in
// the same run; the largest difference between the two. JSON lines (kind "expert_tiles"), then a
// table.
//   bench_expert_tiles [--tokens 16,64,128,256]
#include <ATen/ATen.h>
#include <ATen/ops/_grouped_mm.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "model/fused_kernels.h"
#include "number_list.h"
#include "timing.h"

using at::Tensor;
namespace fused = grpo::model::fused;

int main(int argc, char** argv) {
  CLI::App app{"routed experts' decode products benchmark"};
  std::string tokens = "16,64,128,256";
  app.add_option("--tokens", tokens, "tokens of a decode step");
  CLI11_PARSE(app, argc, argv);
  if (!torch::cuda::is_available()) {
    fprintf(stderr, "bench_expert_tiles: no CUDA device\n");
    return 1;
  }
  c10::NoGradGuard no_grad;
  const at::Device dev(at::kCUDA);
  const double bw = grpo::bench::copy_bandwidth(dev);
  const int64_t E = 64, k = 6;
  const auto bf16 = at::TensorOptions().device(dev).dtype(at::kBFloat16);
  std::vector<std::string> table;
  for (const int64_t T : grpo::bench::parse_list(tokens)) {
    at::manual_seed(T);
    const Tensor experts = at::rand({T, E}, bf16.dtype(at::kFloat)).argsort(/*stable=*/false, 1).narrow(1, 0, k).contiguous();
    const fused::ExpertGroups g = fused::group_by_expert(experts, E);
    const int64_t touched = (g.counts > 0).sum().item<int64_t>();
    for (auto [name, N, K] : std::vector<std::tuple<std::string, int64_t, int64_t>>{{"gate_up", 2816, 2048},
                                                                                    {"down", 2048, 1408}}) {
      const Tensor w = at::randn({E, N, K}, bf16) * 0.05, xs = at::randn({T * k, K}, bf16);
      const double bytes = 2.0 * ((double)touched * N * K + (double)T * k * (K + N));
      const Tensor tiles = fused::grouped_tiles(xs, w, g.ends), gemm = at::_grouped_mm(xs, w.transpose(1, 2), g.ends);
      if (!tiles.defined()) {
        fprintf(stderr, "bench_expert_tiles: grouped_tiles does not take these operands\n");
        return 1;
      }
      const double diff = (tiles.to(at::kFloat) - gemm.to(at::kFloat)).abs().max().item<double>();
      const double s_tiles = grpo::bench::seconds_per_call([&] { fused::grouped_tiles(xs, w, g.ends); }, true);
      const double s_gemm = grpo::bench::seconds_per_call([&] { at::_grouped_mm(xs, w.transpose(1, 2), g.ends); }, true);
      printf("{\"kind\": \"expert_tiles\", \"tokens\": %lld, \"product\": \"%s\", \"experts_with_rows\": %lld, "
             "\"tiles_us\": %.2f, \"grouped_gemm_us\": %.2f, \"tiles_of_copy\": %.4f, \"grouped_gemm_of_copy\": %.4f, "
             "\"copy_bandwidth\": %.4g, \"max_diff\": %.3g}\n",
             (long long)T, name.c_str(), (long long)touched, s_tiles * 1e6, s_gemm * 1e6, bytes / s_tiles / bw,
             bytes / s_gemm / bw, bw, diff);
      fflush(stdout);
      char row[256];
      snprintf(row, sizeof row, "| %lld | %s | %lld | %.1f | %.1f%% | %.1f | %.1f%% | %.2fx | %.3g |", (long long)T,
               name.c_str(), (long long)touched, s_gemm * 1e6, 100 * bytes / s_gemm / bw, s_tiles * 1e6,
               100 * bytes / s_tiles / bw, s_gemm / s_tiles, diff);
      table.push_back(row);
    }
  }
  printf("\ncopy bandwidth %.0f GB/s\n\n| tokens | product | experts with rows | grouped GEMM us | of copy | tiles us | of copy "
         "| speed-up | max diff |\n|---|---|---|---|---|---|---|---|---|\n",
         bw / 1e9);
  for (const std::string& r : table) printf("%s\n", r.c_str());
  return 0;
}

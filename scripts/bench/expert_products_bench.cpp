// The routed experts' two products of one MoE layer at decode (gate_up, then down, on the rows
// of each expert) through at::_grouped_mm and through fused::expert_products, same inputs, same
// run: microseconds per layer, the bytes they must read (the weights of every expert with a row,
// plus the rows), and that rate as a fraction of the device copy bandwidth measured here.
// DeepSeek-V2-Lite's experts by default (64 experts, top 6, hidden 2048, expert width 1408).
//   bench_expert_products [--tokens 1,16,64,128,256] [--experts 64] [--top-k 6] [--hidden 2048]
//                         [--width 1408]
// Prints a JSON line per row count (kind "expert_products") and a markdown table.
#include <ATen/ATen.h>
#include <ATen/ops/_grouped_mm.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "model/fused_kernels.h"
#include "timing.h"

using at::Tensor;
using grpo::bench::seconds_per_call;

int main(int argc, char** argv) {
  CLI::App app{"grouped expert products at decode: at::_grouped_mm against fused::expert_products"};
  std::string tokens = "1,16,64,128,256";
  int64_t E = 64, k = 6, H = 2048, I = 1408;
  app.add_option("--tokens", tokens, "tokens in the decode step (each routed to --top-k experts)");
  app.add_option("--experts", E);
  app.add_option("--top-k", k);
  app.add_option("--hidden", H);
  app.add_option("--width", I, "each expert's intermediate width");
  CLI11_PARSE(app, argc, argv);
  if (!torch::cuda::is_available()) {
    fprintf(stderr, "bench_expert_products: needs a CUDA device\n");
    return 1;
  }
  c10::NoGradGuard no_grad;
  at::manual_seed(0);
  const auto bf16 = at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16);
  Tensor gate_up = at::randn({E, 2 * I, H}, bf16) * 0.02, down = at::randn({E, H, I}, bf16) * 0.02;
  // Device copy bandwidth (bytes read + written per second) of a 1 GiB buffer.
  Tensor a = at::ones({int64_t(1) << 30}, bf16.dtype(at::kByte)), b = at::empty_like(a);
  const double bandwidth = 2.0 * a.numel() / seconds_per_call([&] { b.copy_(a); }, true);
  a = b = Tensor();
  printf("| tokens | rows per active expert | grouped_mm us | fused us | speed-up | grouped_mm of copy bw | fused of copy bw |\n");
  printf("|---|---|---|---|---|---|---|\n");
  std::stringstream list(tokens);
  for (std::string item; std::getline(list, item, ',');) {
    const int64_t N = std::stoll(item);
    Tensor experts = std::get<1>(at::rand({N, E}, bf16.dtype(at::kFloat)).topk(k, -1));
    grpo::model::fused::ExpertGroups g = grpo::model::fused::group_by_expert(experts, E);
    Tensor xs = at::randn({N, H}, bf16).index_select(0, g.token);
    const int64_t active = (g.counts > 0).sum().item<int64_t>();
    const double bytes = 2.0 * active * (3 * I * H) + 2.0 * N * k * (H + 2 * I + I + H);  // weights, rows in and out
    auto grouped = [&] {
      Tensor gu = at::_grouped_mm(xs, gate_up.transpose(1, 2), g.ends);
      Tensor h = at::silu(gu.narrow(-1, 0, I)) * gu.narrow(-1, I, I);
      return at::_grouped_mm(h, down.transpose(1, 2), g.ends);
    };
    auto fused = [&] {
      Tensor gu = grpo::model::fused::expert_products(xs, gate_up, g.ends);
      Tensor h = at::silu(gu.narrow(-1, 0, I)) * gu.narrow(-1, I, I);
      return grpo::model::fused::expert_products(h.contiguous(), down, g.ends);
    };
    if (!grpo::model::fused::expert_products(xs, gate_up, g.ends).defined()) {
      printf("| %lld | - | fused::expert_products does not apply (more than 32 rows per expert on average) |\n",
             (long long)N);
      continue;
    }
    // The two agree (within a bf16 rounding of the outputs) before either is timed.
    const Tensor want = grouped().to(at::kFloat), got = fused().to(at::kFloat);
    const double err = ((got - want).abs().max() / want.abs().max()).item<double>();
    const double t_grouped = seconds_per_call(grouped, true), t_fused = seconds_per_call(fused, true);
    printf("{\"kind\": \"expert_products\", \"tokens\": %lld, \"active_experts\": %lld, \"bytes\": %.4g, "
           "\"grouped_mm_us\": %.2f, \"fused_us\": %.2f, \"copy_bandwidth\": %.4g, \"max_rel_diff\": %.3g}\n",
           (long long)N, (long long)active, bytes, 1e6 * t_grouped, 1e6 * t_fused, bandwidth, err);
    printf("| %lld | %.1f | %.1f | %.1f | %.2fx | %.1f%% | %.1f%% |\n", (long long)N, (double)N * k / active,
           1e6 * t_grouped, 1e6 * t_fused, t_grouped / t_fused, 100 * bytes / t_grouped / bandwidth,
           100 * bytes / t_fused / bandwidth);
    fflush(stdout);
  }
  printf("device copy bandwidth measured here: %.0f GB/s (read + write)\n", bandwidth / 1e9);
  return 0;
}

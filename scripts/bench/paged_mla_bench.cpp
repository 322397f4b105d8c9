// The paged MLA decode kernel alone (model/paged_mla_cuda.h) at the shapes of a decode step: bytes
// read per second (the rows' keys through their block tables, the queries, the output) against the
// device's copy bandwidth measured in the same run, for the first form and the pipelined form in
// each of its compiled shapes, with each form's largest difference from the first. JSON lines
// (kind "paged_mla"), then a table.
//   bench_paged_mla [--batches 1,16,64,128,256] [--contexts 1152,2176] [--heads 16] [--block-size 16]
// Row b of a batch has context - b % 32 keys (the rows of a decode step differ a little), its blocks
// handed out in a shuffled order. V2/V3's widths: latent rank 512, RoPE part 64.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "model/kernel_trial.h"
#include "model/paged_mla_cuda.h"
#include "number_list.h"
#include "timing.h"

using at::Tensor;
namespace cuda = grpo::model::cuda;

namespace {

struct Form {
  std::string name;
  int keys = 0, stages = 0;  // 0: the first form
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"paged MLA decode kernel benchmark"};
  std::string batches = "1,16,64,128,256", contexts = "1152,2176";
  int64_t heads = 16, block_size = 16;
  const int64_t rank = 512, rope = 64, D = rank + rope;
  app.add_option("--batches", batches, "rows of a decode step");
  app.add_option("--contexts", contexts, "keys of the longest row");
  app.add_option("--heads", heads, "query heads");
  app.add_option("--block-size", block_size, "keys per cache block");
  CLI11_PARSE(app, argc, argv);
  if (!torch::cuda::is_available()) {
    fprintf(stderr, "bench_paged_mla: no CUDA device\n");
    return 1;
  }
  c10::NoGradGuard no_grad;
  const at::Device dev(at::kCUDA);
  const double bw = grpo::bench::copy_bandwidth(dev);
  const std::vector<Form> forms = {{"first form", 0, 0},
                                   {"pipelined, 32 keys x 2", 32, 2},
                                   {"pipelined, 32 keys x 3", 32, 3},
                                   {"pipelined, 16 keys x 3", 16, 3},
                                   {"pipelined, 16 keys x 4", 16, 4}};
  const double scale = 1.0 / std::sqrt(192.0);
  std::vector<std::string> table;
  for (const int64_t ctx : grpo::bench::parse_list(contexts))
    for (const int64_t B : grpo::bench::parse_list(batches)) {
      std::vector<int64_t> lens(B);
      int64_t keys = 0;
      for (int64_t b = 0; b < B; ++b) keys += lens[b] = std::max<int64_t>(1, ctx - b % 32);
      const int64_t nblk = (ctx + block_size - 1) / block_size;
      std::vector<int64_t> ids(B * nblk);
      std::iota(ids.begin(), ids.end(), 0);
      std::shuffle(ids.begin(), ids.end(), std::mt19937_64(B * 1000 + ctx));
      at::manual_seed(0);
      const auto bf16 = at::TensorOptions().device(dev).dtype(at::kBFloat16);
      const Tensor cache = at::randn({B * nblk * block_size, D}, bf16);
      const Tensor tab = at::tensor(ids).view({B, nblk}).to(dev);
      const Tensor ln = at::tensor(lens).to(dev);
      const Tensor q = at::randn({B, heads, D}, bf16) * 2;
      const double bytes = (double)keys * D * 2 + (double)q.numel() * 2 + (double)B * heads * rank * 2;
      Tensor first;
      double first_s = 0;
      for (const Form& f : forms) {
        auto call = [&] {
          if (f.keys == 0) {
            grpo::model::KernelTrialScope plain("");
            return cuda::paged_mla_decode(q, cache, tab, ln, block_size, 0, rank, scale);
          }
          return cuda::paged_mla_decode_pipelined(q, cache, tab, ln, block_size, 0, rank, scale, f.keys, f.stages);
        };
        const Tensor out = call();
        const double diff = first.defined() ? (out.to(at::kFloat) - first.to(at::kFloat)).abs().max().item<double>() : 0.0;
        const double s = grpo::bench::seconds_per_call([&] { call(); }, true);
        if (f.keys == 0) {
          first = out;
          first_s = s;
        }
        const double rate = bytes / s;
        printf("{\"kind\": \"paged_mla\", \"form\": \"%s\", \"batch\": %lld, \"context\": %lld, \"us\": %.2f, "
               "\"bytes_per_s\": %.4g, \"copy_bandwidth\": %.4g, \"of_copy\": %.4f, \"speedup\": %.3f, \"max_diff\": %.3g}\n",
               f.name.c_str(), (long long)B, (long long)ctx, s * 1e6, rate, bw, rate / bw, first_s / s, diff);
        fflush(stdout);
        char row[256];
        snprintf(row, sizeof row, "| %lld | %lld | %s | %.1f | %.0f | %.1f%% | %.2fx | %.3g |", (long long)B,
                 (long long)ctx, f.name.c_str(), s * 1e6, rate / 1e9, 100 * rate / bw, first_s / s, diff);
        table.push_back(row);
      }
    }
  printf("\ncopy bandwidth %.0f GB/s\n\n| batch | context | form | us | GB/s | of copy | vs first form | max diff |\n"
         "|---|---|---|---|---|---|---|---|\n",
         bw / 1e9);
  for (const std::string& r : table) printf("%s\n", r.c_str());
  return 0;
}

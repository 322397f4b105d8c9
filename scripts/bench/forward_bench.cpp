// Forward+backward throughput of the policy on random weights: tokens/s and model FLOP
// utilisation (MFU). Used by scripts/bench_forward.sh; prints one table row per run.
//
// FLOPs per token counted for training (forward + backward = 3x forward): 2 * (parameters that
// multiply this token: attention projections, dense MLP or shared + top-k routed experts, output
// head) + attention scores and values (2 * heads * (qk_dim + v_dim) * keys attended, keys = T/2 on
// average under the causal mask).
#include <ATen/ATen.h>
#include <ATen/SDPBackend.h>
#include <ATen/ops/_fused_sdp_choice.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <algorithm>
#include <iostream>

#include "kernel_profile.h"
#include "model/checkpoint.h"
#include "model/causal_lm.h"
#include "model/deepseek.h"
#include "model/flops.h"
#include "profile/profiler.h"
#include "util/error.h"
#include "util/files.h"

using namespace grpo;
using at::Tensor;

namespace {

// The device's bf16 matrix-product rate, TFLOP/s: 8192^3 products, best of three timings of 10.
double matmul_tflops(const at::Device& device) {
  if (!device.is_cuda()) return 0;
  auto opts = at::TensorOptions().dtype(at::kBFloat16).device(device);
  const int64_t n = 8192;
  Tensor a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    torch::cuda::synchronize();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) at::mm(a, b);
    torch::cuda::synchronize();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 10 * 2.0 * n * n * n / sec / 1e12);
  }
  return best;
}

// The kernel PyTorch's scaled_dot_product_attention picks for this model's causal attention of
// T tokens (as the timed steps called it, with the kernels on trial as they were).
std::string attention_backend(const ModelConfig& c, int64_t B, int64_t T, at::Device device, at::ScalarType dtype) {
  const int64_t nh = c.num_attention_heads;
  const int64_t dk = c.mla() ? c.qk_head_dim() : c.head_dim, dv = c.mla() ? c.v_head_dim : dk;
  const auto o = at::TensorOptions().dtype(dtype).device(device);
  const Tensor q = at::empty({B, nh, T, dk}, o), v = at::empty({B, nh, T, dv}, o);
  switch (static_cast<at::SDPBackend>(at::_fused_sdp_choice(q, q, v, {}, 0.0, true, c.softmax_scale()))) {
    case at::SDPBackend::math: return "math";
    case at::SDPBackend::flash_attention: return "flash";
    case at::SDPBackend::efficient_attention: return "efficient";
    case at::SDPBackend::cudnn_attention: return "cudnn";
    default: return "other";
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"forward+backward benchmark"};
  std::string config_path, dtype_name = "float32", device_name = "cpu", label;
  int64_t batch = 4, seq = 256, iters = 5, warmup = 2, layers = 0;
  double peak_tflops = 800;
  app.add_option("--config", config_path, "config.json")->required();
  app.add_option("--layers", layers, "override num_hidden_layers (0: keep)");
  app.add_option("--dtype", dtype_name);
  app.add_option("--device", device_name);
  app.add_option("--batch", batch);
  app.add_option("--seq", seq);
  app.add_option("--iters", iters);
  app.add_option("--warmup", warmup);
  app.add_option("--peak-tflops", peak_tflops, "for MFU (0: measure the device's bf16 matrix-product rate)");
  app.add_option("--label", label);
  bool json = false;
  app.add_flag("--json", json, "print a JSON line instead of a table row");
  int64_t profile_top = 0;
  app.add_option("--profile", profile_top,
                 "after the timing, print the N kernels taking the most device time in one forward+backward step");
  CLI11_PARSE(app, argc, argv);
  try {
    std::string text = read_file(config_path);
    ModelConfig c = parse_model_config(text, config_path);
    if (layers > 0) c.num_hidden_layers = layers;
    c.num_nextn_predict_layers = 0;
    const at::Device device(device_name);
    const at::ScalarType dtype = model::parse_dtype_name(dtype_name);
    auto m = std::make_shared<model::CausalLM>(c);
    m->to_device_dtype(device, dtype);
    {
      at::NoGradGuard g;
      for (auto& p : m->parameters()) p.dim() > 1 ? (void)p.normal_(0, c.initializer_range) : (void)p.fill_(1);
    }
    int64_t n_params = 0;
    for (auto& p : m->parameters()) n_params += p.numel();
    auto sync = [&] {
      if (device.is_cuda()) torch::cuda::synchronize();
    };
    at::manual_seed(0);
    Tensor ids = at::randint(c.vocab_size, {batch, seq}, at::TensorOptions().dtype(at::kLong).device(device));
    auto step = [&] {
      Tensor h = m->hidden_states(ids.narrow(1, 0, seq - 1));
      Tensor logits = m->logits(h).to(at::kFloat);
      Tensor loss = at::cross_entropy_loss(logits.reshape({-1, c.vocab_size}), ids.narrow(1, 1, seq - 1).reshape({-1}));
      loss.backward();
      for (auto& p : m->parameters()) p.mutable_grad().reset();
      return loss.item<double>();
    };
    for (int64_t i = 0; i < warmup; ++i) step();
    sync();
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < iters; ++i) step();
    sync();
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double tokens = double(batch) * (seq - 1) * iters;
    double tps = tokens / sec;
    // forward + backward (twice the forward) per token
    double tflops = tps * 3.0 * model::forward_flops(c, seq - 1, seq - 1) / double(seq - 1) / 1e12;
    if (peak_tflops <= 0) peak_tflops = matmul_tflops(device);
    if (profile_top > 0 && device.is_cuda()) {
      // One profiled step: device time per kernel, largest first, with its share of the step.
      auto times = profile::difference(profile::record(
                                           [&] {
                                             step();
                                             sync();
                                           },
                                           true)
                                           .device);
      const double total = profile::total_ms(times);
      for (size_t i = 0; i < times.size() && (int64_t)i < profile_top; ++i) {
        const std::string name = bench::json_label(times[i].first);
        printf("{\"kind\": \"train_profile\", \"batch\": %lld, \"seq\": %lld, \"kernel\": \"%s\", \"calls\": %lld, "
               "\"ms\": %.3f, \"share\": %.3f}\n",
               (long long)batch, (long long)seq, name.c_str(), (long long)times[i].second.calls, times[i].second.ms,
               times[i].second.ms / total);
      }
      printf("{\"kind\": \"train_profile\", \"batch\": %lld, \"seq\": %lld, \"kernel\": \"(all)\", \"ms\": %.3f, "
             "\"step_ms\": %.3f}\n",
             (long long)batch, (long long)seq, total, 1e3 * sec / iters);
    }
    if (json) {
      printf("{\"kind\": \"train\", \"engine\": \"%s\", \"layers\": %lld, \"batch\": %lld, \"seq\": %lld, "
             "\"tokens_s\": %.1f, \"tflops\": %.2f, \"peak_tflops\": %.1f, \"attention\": \"%s\"}\n",
             label.c_str(), (long long)c.num_hidden_layers, (long long)batch, (long long)seq, tps, tflops, peak_tflops,
             attention_backend(c, batch, seq - 1, device, dtype).c_str());
      return 0;
    }
    printf("| %s | %s | %s | %lld | %.1fM | %lld x %lld | %.0f | %.2f | %s |\n", label.c_str(), device_name.c_str(),
           dtype_name.c_str(), (long long)c.num_hidden_layers, n_params / 1e6, (long long)batch, (long long)seq, tps,
           tflops, device.is_cuda() ? (std::to_string(100.0 * tflops / peak_tflops).substr(0, 5) + "%").c_str() : "-");
    return 0;
  } catch (const c10::Error& e) {
    std::cerr << "bench_forward: error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "bench_forward: error: " << e.what() << "\n";
  }
  return 1;
}

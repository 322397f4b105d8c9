// Peak memory of one training forward+backward against sequence length: one sequence (a 16-token
// prompt and an L-token completion) through the trainer's own path (completion_logprobs: log-probs
// of completion tokens from hidden states in chunks, then backward), on random weights, with LoRA
// adapters over a frozen base or full fine-tuning, with and without gradient checkpointing.
// Lengths double from --min-len until the device runs out of memory or --max-len. Used by
// scripts/bench_memory.sh; prints one table row per length.
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "model/checkpoint.h"
#include "model/causal_lm.h"
#include "model/lora.h"
#include "util/error.h"
#include "util/files.h"

using namespace grpo;
using at::Tensor;

int main(int argc, char** argv) {
  CLI::App app{"training memory against sequence length"};
  std::string config_path, dtype_name = "bfloat16", device_name = "cuda", label;
  int64_t layers = 0, lora_r = 0, min_len = 1024, max_len = 131072;
  bool checkpointing = false, training_state = false;
  app.add_option("--config", config_path, "config.json")->required();
  app.add_option("--layers", layers, "override num_hidden_layers (0: keep)");
  app.add_option("--dtype", dtype_name);
  app.add_option("--device", device_name);
  app.add_option("--lora-r", lora_r, "LoRA rank on all-linear (0: full fine-tuning)");
  app.add_flag("--gradient-checkpointing", checkpointing);
  app.add_flag("--training-state", training_state,
               "also hold what full fine-tuning keeps per trainable parameter: fp32 master weight, its gradient "
               "and AdamW's two moments (16 bytes)");
  app.add_option("--min-len", min_len);
  app.add_option("--max-len", max_len);
  app.add_option("--label", label);
  CLI11_PARSE(app, argc, argv);
  try {
    ModelConfig c = parse_model_config(read_file(config_path), config_path);
    if (layers > 0) c.num_hidden_layers = layers;
    c.num_nextn_predict_layers = 0;
    c.max_position_embeddings = std::max<int64_t>(c.max_position_embeddings, max_len + 16);
    const at::Device device(device_name);
    auto m = std::make_shared<model::CausalLM>(c);
    m->to_device_dtype(device, model::parse_dtype_name(dtype_name));
    {
      at::NoGradGuard g;
      for (auto& p : m->parameters()) p.dim() > 1 ? (void)p.normal_(0, c.initializer_range) : (void)p.fill_(1);
    }
    if (lora_r > 0) {
      for (auto& p : m->parameters()) p.set_requires_grad(false);
      model::add_lora(*m, {lora_r, 2.0 * lora_r, 0, {"all-linear"}}, 1);
    }
    m->gradient_checkpointing = checkpointing;
    std::vector<Tensor> state;  // stands in for the trainer's fp32 master weights, gradients and AdamW moments
    if (training_state)
      for (auto& p : m->parameters())
        if (p.requires_grad()) state.push_back(at::zeros({4, p.numel()}, p.options().dtype(at::kFloat)));
    const int dev = device.index() < 0 ? 0 : device.index();
    auto peak_gb = [&] {
      using c10::CachingAllocator::StatType;
      return c10::cuda::CUDACachingAllocator::getDeviceStats(dev).allocated_bytes[static_cast<size_t>(StatType::AGGREGATE)].peak / 1e9;
    };
    torch::cuda::synchronize();
    const double weights_gb = peak_gb();
    for (int64_t L = min_len; L <= max_len; L *= 2) {
      for (auto& p : m->parameters()) p.mutable_grad().reset();
      c10::cuda::CUDACachingAllocator::emptyCache();
      c10::cuda::CUDACachingAllocator::resetPeakStats(dev);
      std::vector<int64_t> prompt(16), completion(L);
      for (int64_t i = 0; i < 16; ++i) prompt[i] = (i * 7919) % c.vocab_size;
      for (int64_t i = 0; i < L; ++i) completion[i] = (i * 104729 + 17) % c.vocab_size;
      auto t0 = std::chrono::steady_clock::now();
      try {
        Tensor loss = -at::cat(m->completion_logprobs({prompt}, {completion})).sum();
        loss.backward();
        torch::cuda::synchronize();
      } catch (const c10::OutOfMemoryError&) {
        printf("| %s | %s | %lld | out of memory | - |\n", label.c_str(), checkpointing ? "yes" : "no", (long long)L);
        fflush(stdout);
        break;
      }
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      printf("| %s | %s | %lld | %.1f (weights %.1f) | %.2f |\n", label.c_str(), checkpointing ? "yes" : "no",
             (long long)L, peak_gb(), weights_gb, sec);
      fflush(stdout);
    }
    return 0;
  } catch (const c10::Error& e) {
    std::cerr << "bench_memory: error: " << e.what_without_backtrace() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "bench_memory: error: " << e.what() << "\n";
  }
  return 1;
}

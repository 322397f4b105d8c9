// Decode throughput of the rollout engine on a checkpoint, with a no-KV-cache baseline (a full
// forward over the whole sequence per new token) measured in the same run. Prints one JSON line
// per measurement; scripts/bench/rollout_table.py turns them, with transformers' lines, into a table.
//
// Memory roofline: bytes a decode step must read (weights, with routed experts counted as the
// expected number touched by B tokens under uniform routing, plus one read of every sequence's
// KV cache) per measured step time, over the measured device copy bandwidth.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include "kernel_profile.h"
#include "model/checkpoint.h"
#include "model/deepseek.h"
#include "model/moe.h"
#include "profile/profiler.h"
#include "rollout/engine.h"
#include "number_list.h"
#include "timing.h"

using namespace grpo;
using at::Tensor;

namespace {

void sync(const at::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rollout decode benchmark"};
  std::string model_dir, device = "cpu", dtype = "float32", batches = "1,16,64,256", nocache_batches = "1,16,64", label = "grpo";
  int64_t prompt_len = 128, new_tokens = 128, nocache_steps = 16, kv_mb = 0;
  bool no_graphs = false;
  app.add_option("--model", model_dir, "checkpoint directory")->required();
  app.add_option("--device", device);
  app.add_option("--dtype", dtype);
  app.add_option("--batches", batches);
  app.add_option("--nocache-batches", nocache_batches, "batches for the no-cache baseline ('' = none)");
  app.add_option("--prompt-len", prompt_len);
  app.add_option("--new-tokens", new_tokens);
  app.add_option("--nocache-steps", nocache_steps);
  app.add_option("--kv-cache-mb", kv_mb);
  app.add_flag("--no-graphs", no_graphs, "launch the decode step's kernels one by one");
  bool exact = false;
  app.add_flag("--exact", exact, "the batch-invariant forward (exact_rollout)");
  bool speculative = false;
  app.add_flag("--speculative-mtp", speculative, "speculative decoding with the model's MTP module as the draft");
  int64_t drafts = 1;
  app.add_option("--num-speculative-tokens", drafts, "drafts per speculative step");
  bool fp8 = false;
  app.add_flag("--fp8", fp8, "decode with FP8 copies of the weights (128x128 block scales, per-row for the experts)");
  bool unfused = false;
  app.add_flag("--no-fused-kernels", unfused, "ATen's kernel chains instead of the fused RMSNorm, RoPE, SwiGLU and MoE kernels");
  bool synchronous = false;
  app.add_flag("--no-overlap-steps", synchronous,
               "the synchronous loop: each decode step waits for the host to have seen the previous step's tokens");
  bool gather_attention = false;
  app.add_flag("--gather-attention", gather_attention,
               "MLA decode attention over a gathered copy of the cache instead of the paged kernel");
  int64_t profile_top = 0, profile_steps = 16;
  app.add_option("--profile", profile_top,
                 "after each batch, print the N kernels taking the most device time over --profile-steps decode steps, "
                 "and in the prefill");
  app.add_option("--profile-steps", profile_steps);
  double temperature = 1.0;
  app.add_option("--temperature", temperature);
  app.add_option("--label", label);
  CLI11_PARSE(app, argc, argv);

  const at::Device dev(device);
  auto model = model::load_model(model_dir, {model::parse_dtype_name(dtype), dev});
  model->batch_invariant = exact;
  model::MLAImpl::paged_kernel() = !gather_attention;
  const auto& c = model->config();
  const int64_t elem = c10::elementSize(model->dtype());
  c10::NoGradGuard no_grad;

  // Bytes a decode step of B sequences reads, besides the KV cache.
  int64_t dense_bytes = 0, expert_bytes = 0, moe_layers = 0;
  for (auto& kv : model->named_parameters()) {
    const std::string& n = kv.key();
    if (n.find("embed_tokens") != std::string::npos) continue;  // B rows only
    if (n.find("mlp.experts.") != std::string::npos) {
      expert_bytes += kv.value().numel() * elem;
      continue;
    }
    dense_bytes += kv.value().numel() * elem;
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l);
  const double E = c.n_routed_experts, k = c.num_experts_per_tok;
  auto weight_bytes = [&](int64_t B) {
    double touched = moe_layers ? E * (1 - std::pow(1 - k / E, (double)B)) / E : 0;  // fraction of experts
    return dense_bytes + touched * expert_bytes;
  };
  const int64_t kv_token_bytes = c.num_hidden_layers * c.kv_cache_width() * elem;
  const double bw = grpo::bench::copy_bandwidth(dev);
  printf("{\"kind\": \"device\", \"device\": \"%s\", \"copy_bandwidth\": %.4g, \"params\": %lld, \"dtype\": \"%s\"}\n",
         device.c_str(), bw, (long long)[&] { int64_t n = 0; for (auto& p : model->parameters()) n += p.numel(); return n; }(),
         dtype.c_str());
  fflush(stdout);

  std::mt19937 rng(0);
  auto random_prompts = [&](int64_t B) {
    std::vector<std::vector<int64_t>> ps(B);
    for (auto& p : ps)
      for (int64_t t = 0; t < prompt_len; ++t) p.push_back(rng() % c.vocab_size);
    return ps;
  };

  for (int64_t B : grpo::bench::parse_list(batches)) {
    rollout::EngineOptions o;
    o.max_batch = B;
    o.kv_cache_bytes = kv_mb * (int64_t(1) << 20);
    o.cuda_graphs = !no_graphs;
    o.max_prefill_tokens = std::max<int64_t>(8192, prompt_len);
    o.speculative_mtp = speculative;
    o.num_speculative_tokens = drafts;
    o.fused_kernels = !unfused;
    o.overlap_steps = !synchronous;
    o.fp8 = fp8;
    rollout::Engine engine(model, nullptr, o);
    if (fp8 && B == grpo::bench::parse_list(batches).front()) {
      // The bytes a step reads: the quantized layers' values take 1 byte (+ their scales).
      int64_t dense_q = 0, expert_q = 0;
      for (const auto& m : model->modules()) {
        if (auto* lin = dynamic_cast<model::LinearImpl*>(m.get()); lin && lin->fp8.defined())
          dense_q += lin->weight.numel() * (elem - 1) - lin->fp8.scale.numel() * 4;
        if (auto* ex = dynamic_cast<model::RoutedExpertsImpl*>(m.get()); ex && ex->fp8_gate_up.defined())
          expert_q += (ex->gate_up_proj.numel() + ex->down_proj.numel()) * (elem - 1) -
                      (ex->fp8_gate_up.scale.numel() + ex->fp8_down.scale.numel()) * 4;
      }
      dense_bytes -= dense_q;
      expert_bytes -= expert_q;
    }
    rollout::SamplingParams sp;
    sp.temperature = temperature;
    sp.max_new_tokens = new_tokens;
    auto make = [&](int64_t count, int64_t max_new) {
      std::vector<rollout::Request> rs;
      auto ps = random_prompts(count);
      for (int64_t i = 0; i < count; ++i) {
        rollout::SamplingParams q = sp;
        q.max_new_tokens = max_new;
        rs.push_back({i, ps[i], q});
      }
      return rs;
    };
    engine.generate(make(B, std::min<int64_t>(new_tokens, 8)));  // warm-up (and graph capture)
    auto before = engine.stats();
    double t0 = now();
    auto reqs = make(B, new_tokens);
    auto out = engine.generate(reqs);
    sync(dev);
    double total = now() - t0;
    // The engine's log-probs against the training forward's, over the first few samples.
    double diff = 0, diff_sum = 0;
    int64_t diff_n = 0;
    {
      std::vector<std::vector<int64_t>> ps, cs;
      std::vector<const rollout::Completion*> picked;
      for (size_t i = 0; i < out.size() && i < 8; ++i) {
        ps.push_back(reqs[out[i].prompt_index].prompt_ids);
        cs.push_back(out[i].token_ids);
        picked.push_back(&out[i]);
      }
      auto lp = model->completion_logprobs(ps, cs);
      for (size_t i = 0; i < lp.size(); ++i) {
        Tensor host = lp[i].to(at::kCPU);
        for (int64_t j = 0; j < host.numel(); ++j) {
          const double d = std::abs((double)host[j].item<float>() - picked[i]->logprobs[j]);
          diff = std::max(diff, d);
          diff_sum += d;
          ++diff_n;
        }
      }
    }
    auto after = engine.stats();
    double decode_s = after.decode_seconds - before.decode_seconds;
    int64_t steps = after.decode_steps - before.decode_steps;
    int64_t toks = after.decode_tokens - before.decode_tokens;
    double ms_step = 1e3 * decode_s / steps;
    double kv_bytes = (double)B * (prompt_len + new_tokens / 2.0) * kv_token_bytes;
    double bytes = weight_bytes(B) + kv_bytes;
    printf("{\"kind\": \"decode\", \"engine\": \"%s\", \"batch\": %lld, \"prompt\": %lld, \"new\": %lld, "
           "\"decode_tok_s\": %.1f, \"ms_per_step\": %.3f, \"bytes_per_step\": %.4g, \"roofline\": %.4f, "
           "\"prefill_tok_s\": %.1f, \"total_s\": %.3f, \"logprob_diff_max\": %.3g, \"logprob_diff_mean\": %.3g, "
           "\"draft_acceptance\": %.4f}\n",
           label.c_str(), (long long)B, (long long)prompt_len, (long long)new_tokens, toks / decode_s, ms_step, bytes,
           bytes / (ms_step / 1e3) / bw, (after.prefill_tokens - before.prefill_tokens) / (after.prefill_seconds - before.prefill_seconds),
           total, diff, diff_n ? diff_sum / diff_n : 0.0,
           after.draft_tokens > before.draft_tokens
               ? (double)(after.accepted_drafts - before.accepted_drafts) / (after.draft_tokens - before.draft_tokens)
               : -1.0);
    fflush(stdout);
    if (profile_top > 0) {
      // Two runs on the same prompts, one token and 1 + profile_steps: the difference is decode alone.
      auto prompts = make(B, 1);
      auto longer = prompts;
      for (auto& r : longer) r.params.max_new_tokens = 1 + profile_steps;
      auto one = profile::record([&] { engine.generate(prompts); sync(dev); }, true).device;
      auto more = profile::record([&] { engine.generate(longer); sync(dev); }, true).device;
      // The one-token run is the prefill (and one sampling step): where the prefill's time goes.
      const auto prefill = profile::difference(one);
      const double prefill_ms = profile::total_ms(prefill);
      for (size_t i = 0; i < prefill.size() && (int64_t)i < profile_top; ++i)
        printf("{\"kind\": \"prefill_profile\", \"engine\": \"%s\", \"batch\": %lld, \"kernel\": \"%s\", "
               "\"calls\": %lld, \"ms\": %.3f, \"share\": %.3f}\n",
               label.c_str(), (long long)B, bench::json_label(prefill[i].first).c_str(), (long long)prefill[i].second.calls,
               prefill[i].second.ms, prefill[i].second.ms / prefill_ms);
      printf("{\"kind\": \"prefill_profile\", \"engine\": \"%s\", \"batch\": %lld, \"kernel\": \"(all)\", \"ms\": %.3f}\n",
             label.c_str(), (long long)B, prefill_ms);
      auto diff = profile::difference(more, one);
      const double total = profile::total_ms(diff);
      for (size_t i = 0; i < diff.size() && (int64_t)i < profile_top; ++i) {
        const std::string name = bench::json_label(diff[i].first);
        printf("{\"kind\": \"profile\", \"engine\": \"%s\", \"batch\": %lld, \"kernel\": \"%s\", \"calls_per_step\": %.1f, "
               "\"us_per_step\": %.1f, \"share\": %.3f}\n",
               label.c_str(), (long long)B, name.c_str(), (double)diff[i].second.calls / profile_steps,
               1e3 * diff[i].second.ms / profile_steps, diff[i].second.ms / total);
      }
      printf("{\"kind\": \"profile\", \"engine\": \"%s\", \"batch\": %lld, \"kernel\": \"(all)\", \"us_per_step\": %.1f}\n",
             label.c_str(), (long long)B, 1e3 * total / profile_steps);
      fflush(stdout);
    }
  }

  // Baseline: no KV cache, a full forward over prompt + generated tokens for every new token.
  for (int64_t B : grpo::bench::parse_list(nocache_batches)) {
    auto ps = random_prompts(B);
    std::vector<int64_t> flat;
    for (auto& p : ps) flat.insert(flat.end(), p.begin(), p.end());
    Tensor ids = at::tensor(flat, at::kLong).view({B, prompt_len}).to(dev);
    auto step = [&](Tensor& seq) {
      Tensor h = model->hidden_states(seq);
      Tensor next = model->logits(h.select(1, h.size(1) - 1)).argmax(-1, true);
      seq = at::cat({seq, next}, 1);
    };
    Tensor warm = ids.clone();
    step(warm);
    sync(dev);
    Tensor seq = ids.clone();
    double t0 = now();
    for (int64_t s = 0; s < nocache_steps; ++s) step(seq);
    sync(dev);
    double dt = now() - t0;
    double ms_step = 1e3 * dt / nocache_steps;
    printf("{\"kind\": \"decode\", \"engine\": \"no KV cache (full forward per token)\", \"batch\": %lld, \"prompt\": %lld, "
           "\"new\": %lld, \"decode_tok_s\": %.1f, \"ms_per_step\": %.3f}\n",
           (long long)B, (long long)prompt_len, (long long)nocache_steps, B * nocache_steps / dt, ms_step);
    fflush(stdout);
  }
  return 0;
}

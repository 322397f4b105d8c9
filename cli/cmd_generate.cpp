// `grpo generate` (local engine or a rollout server) and `grpo rollout-server`.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "model/checkpoint.h"
#include "rollout/rpc.h"
#include "rollout/service.h"
#include "util/error.h"
#include "util/files.h"
#include "util/jsonl.h"

namespace grpo::cli {

using json = nlohmann::json;
using rollout::Completion;
using rollout::PromptInput;

namespace {

std::vector<PromptInput> read_prompts(const std::string& path) {
  std::vector<PromptInput> out;
  for_each_jsonl_object(path, [&](const json& row, const std::string& where) {
    PromptInput p;
    p.prompt_index = (int64_t)out.size();
    if (row.contains("prompt")) {
      if (!row["prompt"].is_string()) throw Error(where + ": field 'prompt' must be a string");
      p.is_text = true;
      p.text = row["prompt"].get<std::string>();
      if (p.text.empty()) throw Error(where + ": empty prompt");
    } else if (row.contains("prompt_ids")) {
      p.ids = read_ids(row, "prompt_ids", where);
      if (p.ids.empty()) throw Error(where + ": empty prompt_ids");
    } else {
      throw Error(where + ": expected a field 'prompt' (text) or 'prompt_ids' (token ids)");
    }
    out.push_back(std::move(p));
  });
  if (out.empty()) throw Error(path + ": no prompts");
  return out;
}

json completion_json(const Completion& c) {
  json row = {{"prompt_index", c.prompt_index},
              {"sample_index", c.sample_index},
              {"completion", c.text},
              {"completion_ids", c.token_ids},
              {"logprobs", json::array()},
              {"finish_reason", rollout::to_string(c.finish_reason)},
              {"weight_version", c.weight_version}};
  for (float v : c.logprobs) row["logprobs"].push_back(static_cast<double>(v));
  return row;
}

rollout::EngineOptions engine_options(int64_t max_batch, int64_t block_size, int64_t kv_cache_mb, bool speculative_mtp,
                                      int64_t num_speculative_tokens, bool fp8) {
  rollout::EngineOptions o;
  o.speculative_mtp = speculative_mtp;
  o.num_speculative_tokens = num_speculative_tokens;
  o.fp8 = fp8;
  o.max_batch = max_batch;
  o.block_size = block_size;
  o.kv_cache_bytes = kv_cache_mb * (int64_t(1) << 20);
  return o;
}

std::unique_ptr<rollout::EngineBackend> local_backend(const std::string& dir, const std::string& dtype,
                                                      const std::string& device, const rollout::EngineOptions& o) {
  auto model = model::load_model(dir, {model::parse_dtype_name(dtype), parse_device(device)});
  auto tokenizer = rollout::load_tokenizer_if_present(dir);
  return std::make_unique<rollout::EngineBackend>(model, tokenizer, o, dir);
}

}  // namespace

int run_generate(const GenerateArgs& a) {
  return torch_guard([&] {
    if (a.n < 1) throw Error("-n must be at least 1 (got " + std::to_string(a.n) + ")");
    if (!(a.temperature >= 0)) throw Error("--temperature must be >= 0");
    if (!(a.top_p > 0 && a.top_p <= 1)) throw Error("--top-p must be in (0, 1]");
    if (a.max_new_tokens < 1) throw Error("--max-new-tokens must be at least 1");
    if (a.server.empty() && a.model.empty()) throw Error("give --model DIR (local generation) or --server ADDR");
    auto prompts = read_prompts(a.prompts);

    rollout::SamplingParams sp;
    sp.n = a.n;
    sp.temperature = a.temperature;
    sp.top_p = a.top_p;
    sp.top_k = a.top_k;
    sp.max_new_tokens = a.max_new_tokens;
    sp.seed = a.seed;
    sp.stop_strings = a.stop;
    sp.stop_token_ids = a.stop_token_ids;

    std::unique_ptr<rollout::Backend> backend;
    if (!a.server.empty())
      backend = std::make_unique<rollout::RolloutClient>(a.server, a.timeout, 30, to_security(a.security));
    else
      backend = local_backend(a.model, a.dtype, a.device,
                              engine_options(a.max_batch, a.block_size, a.kv_cache_mb, a.speculative_mtp,
                                             a.num_speculative_tokens, a.fp8));

    // Completions go to OUT.partial as they finish (nothing finished is lost if the run stops);
    // OUT is written at the end, ordered by prompt and sample.
    const std::string partial = a.output + ".partial";
    std::ofstream part(partial, std::ios::trunc);
    if (!part) throw Error(partial + ": cannot write");
    const bool tty = ::isatty(2);
    const int64_t total = (int64_t)prompts.size() * a.n;
    std::vector<Completion> results;
    int64_t tokens = 0;
    auto t0 = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    backend->generate(prompts, sp, a.ignore_eos, [&](const Completion& c, const std::vector<int64_t>&) {
      part << completion_json(c).dump() << "\n";
      part.flush();
      tokens += (int64_t)c.token_ids.size();
      results.push_back(c);
      if (tty) {
        const int width = 30;
        int filled = (int)(width * results.size() / std::max<int64_t>(total, 1));
        fprintf(stderr, "\rgrpo generate [%s%s] %zu/%lld completions, %.0f tokens/s", std::string(filled, '#').c_str(),
                std::string(width - filled, '.').c_str(), results.size(), (long long)total, tokens / std::max(elapsed(), 1e-9));
      }
      return true;
    });
    if (tty) fprintf(stderr, "\n");
    part.close();
    std::sort(results.begin(), results.end(), [](const Completion& x, const Completion& y) {
      return x.prompt_index != y.prompt_index ? x.prompt_index < y.prompt_index : x.sample_index < y.sample_index;
    });
    std::string out;
    for (const auto& c : results) out += completion_json(c).dump() + "\n";
    write_file_atomic(a.output, out);
    std::remove(partial.c_str());
    fprintf(stderr, "grpo generate: %zu completions of %zu prompts, %lld tokens in %.1f s (%.0f tokens/s) -> %s\n",
            results.size(), prompts.size(), (long long)tokens, elapsed(), tokens / std::max(elapsed(), 1e-9),
            a.output.c_str());
    return 0;
  });
}

int run_rollout_server(const ServeArgs& a) {
  return torch_guard([&] {
    // Block SIGINT/SIGTERM before any thread starts; the main thread waits for them below.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    auto backend = local_backend(a.model, a.dtype, a.device,
                                 engine_options(a.max_batch, a.block_size, a.kv_cache_mb, a.speculative_mtp,
                                                a.num_speculative_tokens, a.fp8));
    rollout::RolloutServerOptions so;
    so.limits = {a.max_samples, a.max_prompts, a.max_total_samples, a.max_new_tokens, a.max_prompt_bytes};
    so.security = to_security(a.security);
    rollout::RolloutServer server(*backend, a.host, a.port, so);
    auto info = backend->info();
    fprintf(stderr, "grpo rollout-server: listening on %s:%d (model %s, %s %s, %lld KV-cache blocks of %lld tokens)\n",
            a.host.c_str(), server.port(), a.model.c_str(), info.device.c_str(), info.dtype.c_str(),
            (long long)info.kv_cache_blocks, (long long)info.block_size);
    if (!a.port_file.empty()) write_file_atomic(a.port_file, std::to_string(server.port()) + "\n");
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "grpo rollout-server: %s, shutting down\n", sig == SIGINT ? "interrupted" : "terminated");
    server.shutdown();
    return 0;
  });
}

}  // namespace grpo::cli

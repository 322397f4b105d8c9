// Rollout server soak: a tiny random model (scripts/bench/tiny.json) served over loopback gRPC, 64
// clients calling Generate for a fixed time. Most calls are ordinary (text or id prompts, n 1-8,
// stop strings); the rest are hostile: past the server's limits, token ids outside the vocabulary,
// prompts longer than the context, non-finite temperatures, callers that hang up after the first
// completion, and calls with a deadline too short to finish. Prints per kind: calls, completions/s,
// p50/p99/max latency and the answers (ok / refused / cancelled); then whether the server is idle
// again (no running or waiting sequences), the RSS before and after, and
// the latency of one plain call after the soak.
#include <ATen/ATen.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "model/checkpoint.h"
#include "scripts/bench/process_stats.h"
#include "rollout/rpc.h"
#include "rollout/service.h"
#include "text/tokenizer.h"
#include "util/files.h"

using namespace grpo;
using namespace grpo::rollout;
using Clock = std::chrono::steady_clock;

namespace {

enum Kind { Plain, OverLimit, BadIds, TooLong, BadSampling, HangUp, ShortDeadline, kKinds };
const char* kKindName[] = {"ordinary", "past the limits", "ids outside the vocabulary", "prompt past the context",
                           "non-finite temperature", "caller hangs up", "deadline too short"};

struct Stats {
  std::vector<double> ms;
  int64_t completions = 0, completions_in_window = 0, ok = 0, refused = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rollout server soak"};
  std::string config = "scripts/bench/tiny.json";
  int clients = 64;
  double seconds = 60;
  app.add_option("--config", config, "model config.json (random weights)")->capture_default_str();
  app.add_option("--clients", clients, "concurrent clients")->capture_default_str();
  app.add_option("--seconds", seconds, "soak duration")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto model = std::make_shared<model::CausalLM>(parse_model_config(read_file(config), config));
  model::init_weights(*model, 1);
  model->eval();
  auto tok = std::make_shared<const text::Tokenizer>(text::Tokenizer::byte_level());
  EngineOptions eo;
  eo.max_batch = 256;
  EngineBackend backend(model, tok, eo);
  RolloutServerOptions so;
  so.limits.max_samples = 16;
  so.limits.max_new_tokens = 64;
  RolloutServer server(backend, "127.0.0.1", 0, so);
  const std::string addr = "127.0.0.1:" + std::to_string(server.port());
  const ServerInfo info0 = backend.info();
  const double rss_before = bench::rss_mb();
  printf("model %s (vocab %lld, context %lld), KV cache %lld blocks; %d clients, %.0f s\n\n", config.c_str(),
         (long long)info0.vocab_size, (long long)info0.max_context, (long long)info0.kv_cache_blocks, clients, seconds);

  std::mutex mu;
  std::vector<Stats> stats(kKinds);
  std::atomic<bool> stop{false};
  std::vector<std::thread> ts;
  for (int c = 0; c < clients; ++c)
    ts.emplace_back([&, c] {
      RolloutClient plain(addr, 3600, 30), hasty(addr, 0.05, 30);
      for (int round = 0; !stop; ++round) {
        const int k = round * clients + c;
        const Kind kind = k % 4 != 0 ? Plain : Kind(1 + (k / 4) % (kKinds - 1));
        std::vector<PromptInput> prompts(1 + k % 3);
        for (size_t i = 0; i < prompts.size(); ++i) {
          prompts[i].prompt_index = (int64_t)i;
          if ((k + i) % 2) {
            prompts[i].is_text = true;
            prompts[i].text = "Question " + std::to_string(k) + ": what is " + std::to_string(i) + " + 2?";
          } else {
            for (int t = 0; t < 5 + (k % 7); ++t) prompts[i].ids.push_back((k * 13 + t * 7) % 250 + 3);
          }
        }
        SamplingParams sp;
        sp.n = 1 + k % 8;
        sp.max_new_tokens = 16 + k % 32;
        sp.temperature = 1.0;
        sp.seed = (uint64_t)k;
        if (k % 5 == 0) sp.stop_strings = {"\n\n"};
        switch (kind) {
          case OverLimit: sp.n = 1000; break;
          case BadIds: prompts[0] = PromptInput{}, prompts[0].ids = {5, -3, 1 << 30}; break;
          case TooLong: prompts[0] = PromptInput{}, prompts[0].ids.assign(info0.max_context + 5, 7); break;
          case BadSampling: sp.temperature = std::nan(""); break;
          default: break;
        }
        int64_t got = 0, got_in_window = 0;
        bool ok = true;
        auto t0 = Clock::now();
        try {
          (kind == ShortDeadline ? hasty : plain)
              .generate(prompts, sp, false, [&](const Completion&, const std::vector<int64_t>&) {
                ++got;
                if (!stop) ++got_in_window;
                return kind != HangUp;  // hangs up after the first completion
              });
        } catch (const std::exception&) {
          ok = false;
        }
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        std::lock_guard<std::mutex> g(mu);
        Stats& s = stats[kind];
        s.ms.push_back(ms);
        s.completions += got;
        s.completions_in_window += got_in_window;
        (ok ? s.ok : s.refused) += 1;
      }
    });
  auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& t : ts) t.join();
  const double drain = std::chrono::duration<double>(Clock::now() - t0).count() - sec;

  printf("| call | calls | completions/s | p50 latency (ms) | p99 latency (ms) | max (ms) | answered | refused or ended |\n");
  printf("|---|---|---|---|---|---|---|---|\n");
  for (int k = 0; k < kKinds; ++k) {
    Stats& s = stats[k];
    std::sort(s.ms.begin(), s.ms.end());
    auto pct = [&](double p) { return s.ms.empty() ? 0.0 : s.ms[std::min(s.ms.size() - 1, size_t(p * s.ms.size()))]; };
    printf("| %s | %zu | %.1f | %.1f | %.1f | %.1f | %lld | %lld |\n", kKindName[k], s.ms.size(),
           s.completions_in_window / sec, pct(0.5), pct(0.99), s.ms.empty() ? 0.0 : s.ms.back(), (long long)s.ok,
           (long long)s.refused);
  }
  printf("\ncompletions/s: finished within the %.0f s; latency: every call, including the %.1f s the calls in "
         "flight at the end took\n", sec, drain);
  // Hung-up and timed-out callers free their sequences: give the engine a moment, then check.
  ServerInfo after;
  for (int i = 0; i < 100; ++i) {
    after = backend.info();
    if (after.running == 0 && after.waiting == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const EngineStats es = backend.stats();
  printf("server after the soak: %lld running, %lld waiting; engine finished %lld sequences, %lld decode steps\n",
         (long long)after.running, (long long)after.waiting, (long long)es.finished, (long long)es.decode_steps);
  RolloutClient one(addr);
  SamplingParams sp;
  sp.max_new_tokens = 16;
  PromptInput p;
  p.ids = {5, 6, 7};
  auto a0 = Clock::now();
  int64_t n = 0;
  one.generate({p}, sp, false, [&](const Completion&, const std::vector<int64_t>&) { return ++n > 0; });
  printf("one call after the soak: %.1f ms, %lld completion\n",
         std::chrono::duration<double, std::milli>(Clock::now() - a0).count(), (long long)n);
  printf("process RSS: %.0f MB before, %.0f MB after\n", rss_before, bench::rss_mb());
  server.shutdown();
  return after.running == 0 && after.waiting == 0 && stats[Plain].refused == 0 ? 0 : 1;
}

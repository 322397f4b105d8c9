// `grpo eval`: n samples per problem of a benchmark with the rollout engine (or a rollout server),
// scored by the same reward code as training, summarised as pass@1, pass@k and mean reward.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "eval/benchmarks.h"
#include "eval/pass_at_k.h"
#include "model/checkpoint.h"
#include "rewards/builtin.h"
#include "rewards/rpc.h"
#include "rollout/rpc.h"
#include "rollout/service.h"
#include "sandbox/sandbox.h"
#include "text/chat_template.h"
#include "text/tokenizer.h"
#include "util/error.h"
#include "util/files.h"

namespace grpo::cli {

using json = nlohmann::json;

int run_eval(const EvalArgs& a) {
  return torch_guard([&] {
    if (a.n < 1) throw Error("-n must be at least 1 (got " + std::to_string(a.n) + ")");
    if (a.k < 1 || a.k > a.n) throw Error("-k must be in [1, n] (got k " + std::to_string(a.k) + ", n " + std::to_string(a.n) + ")");
    if (!(a.temperature >= 0)) throw Error("--temperature must be >= 0");
    if (a.max_new_tokens < 1) throw Error("--max-new-tokens must be at least 1");
    const bool chat = a.prompt_format == "chat";
    if (chat && a.model.empty())
      throw Error("--prompt-format chat renders prompts with the model's chat template: give --model DIR (also with --server)");
    if (a.server.empty() && a.model.empty()) throw Error("give --model DIR (local engine) or --server ADDR");
    if (a.n > 1 && a.temperature == 0)
      fprintf(stderr, "grpo eval: note: -n %lld at temperature 0 draws the same greedy sample %lld times\n", (long long)a.n,
              (long long)a.n);
    eval::Benchmark bench = eval::load_benchmark(a.benchmark, a.data_dir);
    if (a.limit > 0 && (int64_t)bench.problems.size() > a.limit) bench.problems.resize(a.limit);
    if (bench.reward == "code") {
      const auto& iso = sandbox::probe();
      fprintf(stderr, "grpo: %s\n", iso.summary().c_str());
    }

    std::vector<rollout::PromptInput> prompts;
    std::optional<text::ChatTemplate> chat_template;
    std::shared_ptr<const text::Tokenizer> chat_tok;
    if (chat) {
      chat_template = text::ChatTemplate::load(a.model);
      if (!chat_template) throw Error(a.model + ": no chat template (tokenizer_config.json chat_template or chat_template.jinja)");
      chat_tok = rollout::load_tokenizer_if_present(a.model);
      if (!chat_tok) throw Error(a.model + ": no tokenizer.json");
    }
    for (size_t i = 0; i < bench.problems.size(); ++i) {
      rollout::PromptInput p;
      p.prompt_index = (int64_t)i;
      p.is_text = true;
      p.text = eval::format_prompt(bench, bench.problems[i], a.prompt_format);
      if (chat) {  // rendered text holds the BOS text already: encoded without special tokens, as transformers does
        text::ChatOptions o;
        o.add_generation_prompt = true;
        p.text = chat_template->render(nlohmann::ordered_json::array({{{"role", "user"}, {"content", p.text}}}), o);
        p.is_text = false;
        for (int32_t id : chat_tok->encode(p.text, false)) p.ids.push_back(id);
      }
      prompts.push_back(std::move(p));
    }
    rollout::SamplingParams sp;
    sp.n = a.n;
    sp.temperature = a.temperature;
    sp.top_p = a.top_p;
    sp.max_new_tokens = a.max_new_tokens;
    sp.seed = a.seed;
    std::unique_ptr<rollout::Backend> backend;
    std::vector<bool> past_context(prompts.size(), false);  // counted as wrong, named below
    if (!a.server.empty()) {
      backend = std::make_unique<rollout::RolloutClient>(a.server, 24 * 3600, 30, to_security(a.security));
    } else {
      auto model = model::load_model(a.model, {model::parse_dtype_name(a.dtype), parse_device(a.device)});
      auto tok = rollout::load_tokenizer_if_present(a.model);
      if (!tok) throw Error(a.model + ": no tokenizer.json (grpo eval sends text prompts)");
      rollout::EngineOptions eo;
      eo.kv_cache_bytes = a.kv_cache_mb << 20;
      backend = std::make_unique<rollout::EngineBackend>(model, tok, eo, a.model);
      const int64_t context = backend->info().max_context;
      std::vector<rollout::PromptInput> fit;
      std::string named;
      int64_t skipped = 0;
      for (auto& p : prompts)
        if ((int64_t)(p.is_text ? tok->encode(p.text, true).size() : p.ids.size()) >= context) {
          past_context[p.prompt_index] = true;
          if (skipped++ < 5) named += (named.empty() ? "" : ", ") + bench.problems[p.prompt_index].where;
        } else {
          fit.push_back(std::move(p));
        }
      if (skipped)
        fprintf(stderr, "grpo eval: %lld problems leave no room in the model's context of %lld tokens and count as "
                "wrong (%s%s)\n", (long long)skipped, (long long)context, named.c_str(), skipped > 5 ? ", ..." : "");
      prompts = std::move(fit);
    }

    const bool tty = ::isatty(2);
    const int64_t total = (int64_t)prompts.size() * a.n;
    if (prompts.empty()) throw Error("no problem of " + a.benchmark + " fits the model's context");
    std::vector<rollout::Completion> comps;
    auto t0 = std::chrono::steady_clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    backend->generate(prompts, sp, false, [&](const rollout::Completion& c, const std::vector<int64_t>&) {
      comps.push_back(c);
      if (tty || comps.size() % 256 == 0 || (int64_t)comps.size() == total) {
        const double rate = comps.size() / std::max(elapsed(), 1e-9);
        fprintf(stderr, "%sgrpo eval: %zu/%lld samples, ETA %.0f s%s", tty ? "\r" : "", comps.size(), (long long)total,
                (total - (double)comps.size()) / std::max(rate, 1e-9), tty ? "" : "\n");
      }
      return true;
    });
    if (tty) fprintf(stderr, "\n");
    const double t_generate = elapsed();
    std::sort(comps.begin(), comps.end(), [](const rollout::Completion& x, const rollout::Completion& y) {
      return x.prompt_index != y.prompt_index ? x.prompt_index < y.prompt_index : x.sample_index < y.sample_index;
    });

    std::vector<rewards::RewardItem> items;
    for (const auto& c : comps) {
      const eval::Problem& p = bench.problems[c.prompt_index];
      items.push_back({p.prompt, c.text, p.reference, p.metadata});
    }
    rewards::LocalScorer scorer(std::make_shared<rewards::CombinedReward>(bench.reward, rewards::default_registry()),
                                std::max(1, a.threads));
    auto t1 = std::chrono::steady_clock::now();
    std::vector<rewards::RewardResult> results = scorer.score(items);
    const double t_score = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();

    // A sample is correct when its reward is full marks (the right answer; every test passed).
    std::vector<int64_t> correct(bench.problems.size(), 0);
    double reward_sum = 0;
    int64_t errors = 0;
    std::string samples;
    for (size_t i = 0; i < comps.size(); ++i) {
      const bool ok = results[i].error.empty() && results[i].reward >= 1.0;
      correct[comps[i].prompt_index] += ok;
      reward_sum += results[i].reward;
      errors += !results[i].error.empty();
      json row = {{"problem", comps[i].prompt_index}, {"sample", comps[i].sample_index}, {"completion", comps[i].text},
                  {"reward", results[i].reward}, {"correct", ok}};
      if (!results[i].error.empty()) row["error"] = results[i].error;
      samples += row.dump() + "\n";
    }
    for (size_t i = 0; i < past_context.size(); ++i)
      if (past_context[i])
        for (int64_t j = 0; j < a.n; ++j)
          samples += json({{"problem", i}, {"sample", j}, {"completion", ""}, {"reward", 0.0}, {"correct", false},
                            {"error", "prompt past the model's context"}}).dump() + "\n";
    const double P = (double)bench.problems.size();
    double p1 = 0, pk = 0;
    for (int64_t c : correct) {
      p1 += eval::pass_at_k(a.n, c, 1);
      pk += eval::pass_at_k(a.n, c, a.k);
    }
    json summary = {{"benchmark", bench.name},
                    {"problems", bench.problems.size()},
                    {"n", a.n},
                    {"k", a.k},
                    {"pass@1", p1 / P},
                    {"pass@" + std::to_string(a.k), pk / P},
                    {"mean_reward", reward_sum / (P * a.n)},
                    {"reward", bench.reward},
                    {"reward_errors", errors},
                    {"prompt_format", a.prompt_format},
                    {"temperature", a.temperature},
                    {"max_new_tokens", a.max_new_tokens},
                    {"model", a.server.empty() ? a.model : a.server},
                    {"seconds_generate", t_generate},
                    {"seconds_score", t_score}};
    const std::string k_head = a.k > 1 ? " pass@" + std::to_string(a.k) + " |" : "", k_rule = a.k > 1 ? "---|" : "";
    char k_cell[32] = "";
    if (a.k > 1) snprintf(k_cell, sizeof k_cell, " %.4f |", pk / P);
    printf("| benchmark | problems | n | pass@1 |%s mean reward | generate (s) | score (s) |\n", k_head.c_str());
    printf("|---|---|---|---|%s---|---|---|\n", k_rule.c_str());
    printf("| %s | %zu | %lld | %.4f |%s %.4f | %.1f | %.1f |\n", bench.name.c_str(), bench.problems.size(),
           (long long)a.n, p1 / P, k_cell, summary["mean_reward"].get<double>(), t_generate, t_score);
    if (errors) fprintf(stderr, "grpo eval: %lld samples could not be scored (see \"error\" in the samples file)\n", (long long)errors);
    if (!a.output.empty()) write_file_atomic(a.output, summary.dump(2) + "\n");
    if (!a.samples_output.empty()) write_file_atomic(a.samples_output, samples);
    return 0;
  });
}

}  // namespace grpo::cli

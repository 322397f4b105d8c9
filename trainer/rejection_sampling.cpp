#include "trainer/rejection_sampling.h"

#include <c10/core/GradMode.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "rewards/builtin.h"
#include "rewards/rpc.h"
#include "rollout/engine.h"
#include "rpc/security.h"
#include "dist/communicator.h"
#include "trainer/data_parallel.h"
#include "trainer/dataset.h"
#include "trainer/policy.h"
#include "trainer/prompt_format.h"
#include "trainer/rejection_filter.h"
#include "trainer/run_log.h"
#include "trainer/train.h"
#include "trainer/source_rewards.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::trainer {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

}  // namespace

bool run_rejection_sampling_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out,
                                  bool resume, dist::Communicator* comm) {
  // data.jsonl: the kept samples (an sft stage's data); pairs.jsonl: kept samples preferred to the
  // same prompt's samples dropped for their quality (a reward_model stage's data).
  const std::string partial = out + "/data.jsonl.partial", pairs_partial = out + "/pairs.jsonl.partial",
                    progress_path = out + "/progress.json";
  // Several ranks: each samples and filters its share of every chunk of prompts; the kept samples
  // and the statistics are gathered in prompt order, and rank 0 writes them.
  const StageRanks ranks(comm);
  if (ranks.main() && !resume && !list_directory(out).empty())
    throw Error(out + " already holds files of a run: pass --resume to continue it, or choose another --output");
  if (ranks.main()) make_directories(out);
  if (file_exists(out + "/data.jsonl")) return true;  // finished before
  at::NoGradGuard no_grad;
  Policy pol = load_policy(s, recipe_path);
  PromptFormat format(s.data, pol);
  Dataset data = load_dataset(s.data, recipe_path);
  std::vector<Example>& prompts = data.train;
  if (s.rejection.max_prompts > 0 && (int64_t)prompts.size() > s.rejection.max_prompts)
    prompts.resize(s.rejection.max_prompts);
  auto scorer = make_stage_scorer(s.rewards, 2);
  std::unique_ptr<rewards::Reward> language;
  if (!s.filter.language.empty())
    language = rewards::default_registry().make("language_consistency", {{"language", s.filter.language}});

  rollout::EngineOptions eo;
  eo.max_batch = std::max<int64_t>(64, s.rollout.per_step_prompts * s.rejection.num_samples);
  eo.kv_cache_bytes = (s.rollout.kv_cache_mb > 0 ? s.rollout.kv_cache_mb : 1024) << 20;
  eo.speculative_mtp = s.rollout.speculative_mtp;
  eo.num_speculative_tokens = s.rollout.num_speculative_tokens;
  eo.fp8 = s.rollout.quantization == RolloutQuantization::Fp8;
  rollout::Engine engine(pol.compute, pol.tok.get(), eo);

  // Progress: prompts done, the size of data.jsonl.partial then, and the statistics so far.
  int64_t done = 0;
  json stats = {{"prompts", 0}, {"samples", 0}, {"kept", 0}, {"pairs", 0}, {"kept_per_prompt", json::object()},
               {"rejected", json::object()}};
  if (resume && file_exists(progress_path)) {
    json p = parse_json(read_file(progress_path), progress_path);
    done = p.at("prompts_done");
    stats = p.at("stats");
    if (ranks.main()) {  // drops a chunk written after the last record
      std::filesystem::resize_file(partial, p.at("bytes").get<int64_t>());
      if (!file_exists(pairs_partial)) write_file_atomic(pairs_partial, "");  // a run from before pairs were written
      std::filesystem::resize_file(pairs_partial, p.value("pair_bytes", (int64_t)0));
    }
  } else if (ranks.main()) {
    write_file_atomic(partial, "");
    write_file_atomic(pairs_partial, "");
  }
  RunLog log(ranks.main() ? out : "", resume && done > 0 ? done : -1, s.checkpoint.logging_steps);
  if (done > 0) log.line(s.name + ": resumed after " + std::to_string(done) + " of " + std::to_string(prompts.size()) + " prompts");
  const int64_t chunk = std::max<int64_t>(1, s.rollout.per_step_prompts), total = (int64_t)prompts.size();
  const auto t0 = Clock::now();
  const int64_t start = done;
  while (done < total) {
    const int64_t n = std::min(chunk, total - done);
    const auto [first, last] = ranks.share(n);  // this rank's prompts of the chunk
    std::vector<rollout::Request> reqs;
    std::vector<bool> past(n, false);
    std::map<std::string, int64_t> reasons;
    for (int64_t i = first; i < last; ++i) {
      rollout::Request q;
      q.prompt_index = done + i;  // the random streams follow the prompt, whatever the chunking
      q.prompt_ids = format.prompt_ids(prompts[done + i]);
      q.params.n = s.rejection.num_samples;
      q.params.temperature = s.rollout.temperature;
      q.params.top_p = s.rollout.top_p;
      q.params.max_new_tokens = s.rollout.max_completion_length;
      q.params.stop_token_ids = {pol.eos};
      q.params.seed = s.optim.seed;
      if ((int64_t)q.prompt_ids.size() >= engine.max_context()) {  // no room to sample: every sample rejected
        past[i] = true;
        reasons["prompt_past_context"] += s.rejection.num_samples;
        continue;
      }
      reqs.push_back(std::move(q));
    }
    std::vector<rollout::Completion> comps = engine.generate(reqs);
    std::vector<rewards::RewardItem> items;
    for (const auto& c : comps) {
      const Example& ex = prompts[c.prompt_index];
      rewards::RewardItem it{ex.prompt, c.text, ex.answer, ex.metadata};
      it.metadata["completion_tokens"] = c.token_ids.size();
      items.push_back(std::move(it));
    }
    std::vector<rewards::RewardResult> results = scorer->score(items);
    std::string lines, pair_lines;
    json kept_per_prompt = json::object();
    int64_t kept_here = 0, pairs_here = 0;
    for (int64_t i = first; i < last; ++i) {
      const Example& ex = prompts[done + i];
      std::vector<Candidate> cands;
      for (size_t k = 0; k < comps.size(); ++k)
        if (comps[k].prompt_index == done + i) {
          Candidate c;
          c.completion = comps[k].text;
          c.tokens = (int64_t)comps[k].token_ids.size();
          c.truncated = comps[k].finish_reason == rollout::FinishReason::Length;
          c.result = results[k];
          if (language) c.language_share = language->score(items[k]).reward;
          cands.push_back(std::move(c));
        }
      std::vector<std::string> why;
      std::vector<size_t> kept = past[i] ? std::vector<size_t>{} : select_samples(s.filter, cands, reasons, &why);
      const json prompt = ex.messages.is_array() ? json::parse(format.prompt_messages(ex).dump()) : json(ex.prompt);
      for (size_t k : kept)
        lines += json({{"prompt", prompt}, {"completion", cands[k].completion}, {"answer", ex.answer}}).dump() + "\n";
      if (!past[i])
        for (auto [good, bad] : preference_pairs(cands, kept, why)) {
          pair_lines += json({{"prompt", prompt}, {"chosen", cands[good].completion}, {"rejected", cands[bad].completion},
                              {"rejected_because", why[bad]}}).dump() + "\n";
          ++pairs_here;
        }
      const std::string key = std::to_string(kept.size());
      kept_per_prompt[key] = kept_per_prompt.value(key, 0) + 1;
      kept_here += (int64_t)kept.size();
    }
    // Every rank's share of the chunk, in rank (so prompt) order.
    const std::string mine = json({{"lines", lines}, {"pair_lines", pair_lines}, {"kept_per_prompt", kept_per_prompt},
                                   {"kept", kept_here}, {"pairs", pairs_here}, {"rejected", reasons}}).dump();
    lines.clear();
    pair_lines.clear();
    for (const std::string& part : comm ? comm->all_gather(mine) : std::vector<std::string>{mine}) {
      const json p = json::parse(part);
      lines += p.at("lines").get<std::string>();
      pair_lines += p.at("pair_lines").get<std::string>();
      stats["pairs"] = stats["pairs"].get<int64_t>() + p.at("pairs").get<int64_t>();
      for (auto& [key, count] : p.at("kept_per_prompt").items())
        stats["kept_per_prompt"][key] = stats["kept_per_prompt"].value(key, 0) + count.get<int64_t>();
      stats["kept"] = stats["kept"].get<int64_t>() + p.at("kept").get<int64_t>();
      for (auto& [why, count] : p.at("rejected").items())
        stats["rejected"][why] = stats["rejected"].value(why, 0) + count.get<int64_t>();
    }
    stats["prompts"] = stats["prompts"].get<int64_t>() + n;
    stats["samples"] = stats["samples"].get<int64_t>() + n * s.rejection.num_samples;
    done += n;
    ranks.on_main([&] {
      for (auto [path, text] : {std::pair{&partial, &lines}, std::pair{&pairs_partial, &pair_lines}}) {
        std::ofstream f(*path, std::ios::app | std::ios::binary);
        f << *text;
        f.flush();
        if (!f) throw Error(*path + ": cannot append the chunk's samples (disk full?)");
      }
      write_file_atomic(progress_path, json({{"prompts_done", done}, {"bytes", (int64_t)std::filesystem::file_size(partial)},
                                             {"pair_bytes", (int64_t)std::filesystem::file_size(pairs_partial)},
                                             {"stats", stats}}).dump() + "\n");
    });
    const double kept_fraction = stats["kept"].get<double>() / std::max<double>(1, stats["samples"].get<double>());
    log.metrics({{"step", done}, {"kept", stats["kept"]}, {"samples", stats["samples"]}, {"kept_fraction", kept_fraction}}, done);
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    char buf[200];
    snprintf(buf, sizeof buf, "%s %lld/%lld prompts  kept %lld of %lld samples (%.1f%%)  %s elapsed, ETA %s", s.name.c_str(),
             (long long)done, (long long)total, (long long)stats["kept"].get<int64_t>(),
             (long long)stats["samples"].get<int64_t>(), 100 * kept_fraction, format_duration(elapsed).c_str(),
             format_duration(elapsed / (done - start) * (total - done)).c_str());
    log.progress(buf, done);
    ranks.agree_on_stop();
    if (stop_requested() && done < total) {
      log.line("stopped after " + std::to_string(done) + " prompts; continue with --resume");
      return false;
    }
  }
  ranks.on_main([&] {
    write_file_atomic(out + "/stats.json", stats.dump(2) + "\n");
    std::filesystem::rename(pairs_partial, out + "/pairs.jsonl");
    std::filesystem::rename(partial, out + "/data.jsonl");  // last: its presence marks the stage done
  });
  log.line(s.name + " done: kept " + std::to_string(stats["kept"].get<int64_t>()) + " of " +
           std::to_string(stats["samples"].get<int64_t>()) + " samples from " + std::to_string(total) +
           " prompts; rejected " + stats["rejected"].dump() + "; " + out + "/data.jsonl; " +
           std::to_string(stats["pairs"].get<int64_t>()) + " preference pairs in " + out + "/pairs.jsonl");
  return true;
}

}  // namespace grpo::trainer

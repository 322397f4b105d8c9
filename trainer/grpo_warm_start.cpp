#include "trainer/grpo_trainer_impl.h"

#include <c10/core/GradMode.h>
#include <torch/nn/utils/clip_grad.h>

#include <algorithm>
#include <cmath>

#include "trainer/data_parallel.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::trainer {

using at::Tensor;
using json = nlohmann::json;
using Model = model::CausalLM;

// ---- evaluation on the held-out split: greedy pass@1 and mean reward; with k samples per prompt
// (fixed seed, the recipe's temperature) also their mean reward, mean accuracy and pass@k.
EvalResult GrpoTrainer::evaluate() {
  EvalResult e;
  const auto& eval = data_.eval;
  if (eval.empty()) return e;
  std::vector<rollout::Request> reqs;
  for (size_t i = 0; i < eval.size(); ++i) {
    reqs.push_back(request(eval[i], (int64_t)i));
    reqs.back().params.temperature = 0;
  }
  auto run = [&](int64_t n) {
    std::vector<rewards::RewardItem> items;
    for (const auto& c : engine_->generate(reqs)) items.push_back(reward_item(eval[c.prompt_index], c));
    auto results = score(items, "eval");
    double acc = 0, rew = 0, pass = 0;
    int64_t scored = 0, problems = 0;  // samples and problems with a right-or-wrong score
    for (size_t p = 0; p < eval.size(); ++p) {
      double best = 0;
      bool any = false;
      for (int64_t j = 0; j < n; ++j) {
        const auto& res = results[p * n + j];
        rew += res.reward;
        if (auto a = accuracy_of(res)) {
          acc += *a;
          best = std::max(best, *a);
          ++scored;
          any = true;
        }
      }
      pass += best;
      problems += any;
    }
    const double N = (double)results.size();
    return std::array<double, 3>{acc / std::max<int64_t>(1, scored), rew / N, pass / std::max<int64_t>(1, problems)};
  };
  auto greedy = run(1);
  e.accuracy = greedy[0];
  e.reward = greedy[1];
  if (s_.eval.eval_num_generations > 0) {
    for (auto& q : reqs) {
      q.params.n = s_.eval.eval_num_generations;
      q.params.temperature = s_.rollout.temperature;
      q.params.top_p = s_.rollout.top_p;
      q.params.seed = s_.optim.seed * 1000003 + 999999937;  // the same draws at every evaluation
    }
    auto sampled = run(s_.eval.eval_num_generations);
    e.sampled_accuracy = sampled[0];
    e.sampled_reward = sampled[1];
    e.pass_at_k = sampled[2];
  }
  return e;
}

// ---- warm start: supervised steps on prompt -> answer </s>, to make a weak base from scratch.
// Every rank draws the step's whole batch (the same draws), trains its share of the rows with the
// loss over the whole batch's tokens, and the gradients are summed over the ranks: every rank
// takes the step one rank would, with 1/W of the work. The AdamW state is whole on every rank.
void GrpoTrainer::warm_start() {
  torch::optim::AdamW& sft = *sft_optimizer_;
  const StageRanks ranks(comm_);
  const auto t0 = Clock::now();
  const int64_t steps = s_.warm_start.sft_steps, first = st_.warm_start_step, rows = s_.warm_start.sft_batch_size;
  const auto [mine_first, mine_last] = ranks.share(rows);
  for (int64_t s = first; s < steps; ++s) {
    std::vector<std::vector<int64_t>> ps, cs;
    int64_t tokens = 0;  // the whole batch's completion tokens, over every rank's rows
    for (int64_t b = 0; b < rows; ++b) {
      const auto& ex = data_.train[sft_rng_() % data_.train.size()];
      auto c = encode(ex.answer, false);
      c.push_back(eos_);
      tokens += (int64_t)c.size();
      if (b < mine_first || b >= mine_last) continue;
      ps.push_back(format_->prompt_ids(ex));
      cs.push_back(std::move(c));
    }
    sft.zero_grad();
    Tensor loss;  // this rank's rows' share of the batch's mean negative log-likelihood
    if (!cs.empty()) {
      loss = -at::cat(policy_->completion_logprobs(ps, cs)).sum() / (double)tokens;
      loss.backward();
    }
    accumulate_gradients();
    if (comm_) all_reduce_gradients(*comm_, pol_.trainable_parameters());
    const double norm = torch::nn::utils::clip_grad_norm_(pol_.trainable_parameters(), s_.optim.max_grad_norm);
    const double sft_loss = ranks.sum({loss.defined() ? loss.item<double>() : 0.0})[0];
    if (!std::isfinite(norm) || !std::isfinite(sft_loss))
      throw Error("warm-start step " + std::to_string(s + 1) + ": the loss (" + std::to_string(sft_loss) +
                  ") or gradient norm (" + std::to_string(norm) + ") is not finite; stopped before the update");
    sft.step();
    sync_policy();
    st_.warm_start_step = s + 1;
    if (st_.warm_start_step % 10 == 0 || st_.warm_start_step == steps) {
      const double elapsed = seconds_since(t0), per_step = elapsed / (st_.warm_start_step - first);
      char buf[160];
      snprintf(buf, sizeof buf, "warm start %lld/%lld  loss %.4f  %s elapsed, ETA %s", (long long)st_.warm_start_step,
               (long long)steps, sft_loss, format_duration(elapsed).c_str(),
               format_duration(per_step * (steps - st_.warm_start_step)).c_str());
      log_->progress(buf, st_.warm_start_step);
    }
    // Progress checkpoints of the warm start go to one directory, replaced each time.
    const int64_t every = s_.checkpoint.save_every;
    const bool stopping = stop_everywhere() && st_.warm_start_step < steps;
    if ((every > 0 && st_.warm_start_step % every == 0 && st_.warm_start_step < steps) || stopping) save("warm-start");
    if (stopping) {
      log_->line("stopped after warm start step " + std::to_string(st_.warm_start_step) + "; saved in " + out_ +
                 "/warm-start; continue with --resume");
      throw Stopped{};
    }
  }
  st_.warm_start_done = true;
  EvalResult e = main_rank() ? evaluate() : EvalResult{};
  log_->line("after the warm start (" + std::to_string(steps) + " steps, " + format_duration(seconds_since(t0)) +
             "): " + e.describe());
  json m = {{"step", 0}, {"phase", "warm_start"}};
  e.add_to(m);
  log_->metrics(m, 0);
  save("checkpoint-0");
  if (main_rank()) remove_tree(out_ + "/warm-start");  // superseded by checkpoint-0
}


}  // namespace grpo::trainer

#include "trainer/grpo_trainer_impl.h"

#include <algorithm>

#include "trainer/grpo_loss.h"
#include "util/error.h"
#include "util/json.h"

namespace grpo::trainer {

using at::Tensor;
using json = nlohmann::json;
using Model = model::CausalLM;

// ---- rollout: G completions for each of per_step_prompts prompts, scored, with group-normalised
// advantages. Dynamic sampling (DAPO) drops groups whose rewards are all equal (they carry no
// signal) and samples further prompts, up to max_num_gen_batches batches, to refill the step.
RolloutBatch GrpoTrainer::sample(int64_t step, rollout::Engine& engine, int64_t position) {
  RolloutBatch b;
  const int64_t G = s_.rollout.num_generations, n = s_.rollout.per_step_prompts;
  // With several ranks, this rank rolls out prompts [first, first + nl) of the step's n; prompt
  // indices stay global, so the union of every rank's samples is what one rank would draw.
  const int64_t W = comm_ ? comm_->world_size() : 1, nl = n / W, first = comm_ ? comm_->rank() * nl : 0;
  AdvantageConfig ac;
  ac.scale_rewards = s_.advantages.scale_rewards != ScaleRewards::None;
  ac.batch_std = s_.advantages.scale_rewards == ScaleRewards::Batch;  // over each rollout batch
  int64_t kept_everywhere = 0;  // groups kept so far in this step, over all ranks
  for (int64_t round = 0; round < s_.advantages.max_num_gen_batches; ++round) {
    std::vector<rollout::Request> reqs;
    std::vector<const Example*> examples;
    for (int64_t i = first; i < first + nl; ++i) {
      examples.push_back(&data_.train[order_->at(position + i)]);
      // prompt_index feeds the random streams: later rounds draw fresh ones.
      rollout::Request q = request(*examples.back(), round * n + i);
      q.params.n = G;
      q.params.temperature = s_.rollout.temperature;
      q.params.top_p = s_.rollout.top_p;
      q.params.seed = s_.optim.seed * 1000003 + step;
      reqs.push_back(q);
    }
    position += n;
    engine.weight_version = step;
    auto t0 = Clock::now();
    const rollout::EngineStats before = engine.stats();
    auto comps = engine.generate(reqs);
    b.time_rollout += seconds_since(t0);
    b.draft_tokens += engine.stats().draft_tokens - before.draft_tokens;
    b.accepted_drafts += engine.stats().accepted_drafts - before.accepted_drafts;
    if (engine.stats().fp8_layers > 0)
      b.time_fp8_quantize = std::max(0.0, b.time_fp8_quantize) + engine.stats().fp8_seconds - before.fp8_seconds;
    ++b.gen_batches;

    std::vector<rewards::RewardItem> items;
    for (const auto& c : comps) items.push_back(reward_item(*examples[c.prompt_index - round * n - first], c));
    t0 = Clock::now();
    auto results = score(items, "step " + std::to_string(step));
    b.time_reward += seconds_since(t0);
    std::vector<double> rw(results.size());
    for (size_t i = 0; i < results.size(); ++i) {
      rw[i] = results[i].reward;
      b.add_sample(results[i], comps[i], items[i].prompt, items[i].reference);
    }
    Tensor rewards_t = at::tensor(rw, at::kFloat), adv_local;
    if (comm_) {
      // Every rank's rewards in one (n * G) vector, so that advantages (group- or batch-normalised)
      // are computed over the same numbers as on one rank; this rank then takes its own slice.
      std::vector<Tensor> all{at::zeros({n * G}, at::kDouble)};
      all[0].narrow(0, first * G, nl * G).copy_(at::tensor(rw, at::kDouble));
      comm_->all_reduce_sum(all);
      Tensor global = all[0].to(at::kFloat);
      rewards_t = global.narrow(0, first * G, nl * G).contiguous();
      b.rewards.assign(all[0].data_ptr<double>(), all[0].data_ptr<double>() + n * G);  // for the step's metrics
      Tensor adv_all = group_advantages(global, G, ac);
      adv_local = adv_all.narrow(0, first * G, nl * G).contiguous();
    }
    Tensor adv = comm_ ? adv_local : group_advantages(rewards_t, G, ac);
    auto adv_a = adv.accessor<float, 1>();
    // Which of the round's n groups are flat (every reward equal), over all ranks; dynamic sampling
    // keeps the first non-flat ones in prompt order until the step holds n groups, as one rank would,
    // so a rank may keep more or fewer than its share.
    std::vector<Tensor> flat_t{at::zeros({n}, at::kFloat)};
    flat_t[0].narrow(0, first, nl).copy_(rewards_t.view({-1, G}).std(1).eq(0).to(at::kFloat));
    if (comm_) comm_->all_reduce_sum(flat_t);
    auto flat_a = flat_t[0].accessor<float, 1>();
    std::vector<bool> keep(n);
    for (int64_t k = 0; k < n; ++k)
      if (kept_everywhere < n && !(s_.advantages.dynamic_sampling && flat_a[k] != 0)) keep[k] = true, ++kept_everywhere;
    for (int64_t g = 0; g < nl; ++g) {
      ++b.groups;
      b.zero_std_groups += flat_a[first + g] != 0;
      if (!keep[first + g]) continue;
      ++b.kept_groups;
      for (int64_t j = 0; j < G; ++j) {
        const auto& c = comps[g * G + j];
        if (c.prompt_index != round * n + first + g || c.sample_index != j)
          throw Error("rollout returned completions out of order");
        if (c.token_ids.empty()) continue;
        const bool truncated = c.finish_reason == rollout::FinishReason::Length;
        b.prompts.push_back(reqs[g].prompt_ids);
        b.completions.push_back(c.token_ids);
        b.old_logp.push_back(at::tensor(c.logprobs, at::kFloat));  // on the host: the trainer moves them
        // routing_replay, and exact_rollout's update (empty records for a model without MoE layers)
        if (s_.moe.routing_replay || s_.rollout.exact_rollout) b.routed_experts.push_back(c.routed_experts);
        // Truncated completions are masked out entirely when asked (their reward still counts in the group).
        b.advantages.push_back(truncated && s_.advantages.mask_truncated_completions ? 0.0 : adv_a[g * G + j]);
        b.tokens += (int64_t)(c.token_ids.size() + reqs[g].prompt_ids.size());
      }
    }
    if (!s_.advantages.dynamic_sampling || kept_everywhere == n) break;
  }
  b.position_end = position;
  return b;
}


}  // namespace grpo::trainer

#include "trainer/step_metrics.h"

#include <algorithm>
#include <cstdio>

#include "trainer/run_log.h"

namespace grpo::trainer {

using json = nlohmann::json;

std::optional<double> accuracy_of(const rewards::RewardResult& res) {
  auto it = res.components.find("math");
  if (it != res.components.end()) return it->second;
  if (res.components.count("reward_model")) return std::nullopt;  // a preference score: no right or wrong
  return res.reward;
}

void EvalResult::add_to(json& m) const {
  m["eval_accuracy"] = accuracy;
  m["eval_reward"] = reward;
  if (!std::isnan(sampled_reward)) {
    m["eval_sampled_accuracy"] = sampled_accuracy;
    m["eval_sampled_reward"] = sampled_reward;
    m["eval_pass_at_k"] = pass_at_k;
  }
}

std::string EvalResult::describe() const {
  char buf[160];
  snprintf(buf, sizeof buf, "eval accuracy %.3f, reward %.3f", accuracy, reward);
  std::string s = buf;
  if (!std::isnan(sampled_reward)) {
    snprintf(buf, sizeof buf, "; sampled: accuracy %.3f, reward %.3f, pass@k %.3f", sampled_accuracy, sampled_reward,
             pass_at_k);
    s += buf;
  }
  return s;
}

void RolloutBatch::add_sample(const rewards::RewardResult& res, const rollout::Completion& c, const std::string& prompt,
                              const std::string& reference) {
  if (samples.size() < 4) {
    auto quoted = [](const std::string& s) { return "`" + (s.size() > 2000 ? s.substr(0, 2000) + "..." : s) + "`"; };
    char r[64];
    snprintf(r, sizeof r, "%.3f", res.reward);
    samples.push_back("**prompt** " + quoted(prompt) + "  \n**completion** " + quoted(c.text) + "  \n**reference** " +
                      quoted(reference) + ", **reward** " + r + (res.error.empty() ? "" : " (" + res.error + ")"));
  }
  rewards.push_back(res.reward);
  if (auto acc = accuracy_of(res)) {
    accuracy_sum += *acc;
    ++accuracy_count;
  }
  reward_errors += !res.error.empty();
  for (const auto& [name, v] : res.components) {
    component_sums[name] += v;
    ++component_counts[name];
  }
  truncated += c.finish_reason == rollout::FinishReason::Length;
  const int64_t len = (int64_t)c.token_ids.size();
  length_sum += (double)len;
  length_max = std::max(length_max, len);
  length_min = length_min < 0 ? len : std::min(length_min, len);
}

json step_metrics(const RolloutBatch& b, const UpdateStats& u, double lr, double t_train, const StageSettings& s) {
  const double N = std::max<double>(1, (double)b.rewards.size());
  double mean = 0, var = 0;
  for (double r : b.rewards) mean += r / N;
  for (double r : b.rewards) var += (r - mean) * (r - mean);
  const double std_dev = b.rewards.size() > 1 ? std::sqrt(var / (b.rewards.size() - 1)) : 0.0;
  json m = {{"reward", mean},
            {"reward_std", std_dev},
            {"accuracy", b.accuracy_sum / std::max<int64_t>(1, b.accuracy_count)},
            {"loss", u.loss},
            {"kl", u.kl},
            {"entropy", u.entropy},
            {"grad_norm", u.grad_norm},
            {"learning_rate", lr},
            {"clip_ratio/region_mean", u.clip_fraction},
            {"clip_ratio/low_mean", u.clip_low},
            {"clip_ratio/high_mean", u.clip_high},
            {"completions/mean_length", b.length_sum / N},
            {"completions/min_length", std::max<int64_t>(0, b.length_min)},
            {"completions/max_length", b.length_max},
            {"completions/clipped_ratio", b.truncated / N},
            {"frac_reward_zero_std", (double)b.zero_std_groups / std::max<int64_t>(1, b.groups)},
            {"reward_errors", b.reward_errors},
            {"expert_load_max_over_mean", u.expert_spread},
            {"time_rollout", b.time_rollout},
            {"time_reward", b.time_reward},
            {"time_train", t_train},
            {"perf/train_tflops", u.model_flops / std::max(1e-9, t_train) / 1e12},
            {"tokens_per_second", b.tokens / std::max(1e-9, b.time_rollout + b.time_reward + t_train)}};
  // Each component's mean over the samples it scored (with rewards_by_source, not every sample).
  for (const auto& [name, sum] : b.component_sums) m["rewards/" + name + "/mean"] = sum / b.component_counts.at(name);
  if (s.moe.aux_loss_alpha > 0) m["aux_loss"] = u.aux_loss;
  if (s.model.mtp_loss_weight > 0) m["mtp_loss"] = u.mtp_loss;
  if (u.grad_comm_overlap >= 0) m["perf/grad_comm_overlap"] = u.grad_comm_overlap;
  if (u.logprob_diff_measured) {
    m["rollout_logprob_diff"] = u.rollout_logprob_diff;
    m["rollout_logprob_diff/p50"] = u.rollout_logprob_diff_p50;
    m["rollout_logprob_diff/p99"] = u.rollout_logprob_diff_p99;
    m["rollout_logprob_diff/max"] = u.rollout_logprob_diff_max;
  }
  if (s.moe.routing_replay || s.rollout.exact_rollout) {
    m["routing/replay_mb"] = u.routing_replay_mb;
    if (u.routing_agreement >= 0) m["routing/agreement"] = u.routing_agreement;
  }
  if (s.loss.rollout_is != RolloutIs::Off) {
    m["rollout_is/ratio_mean"] = u.is_ratio_mean;
    m["rollout_is/ratio_min"] = u.is_ratio_min;
    m["rollout_is/ratio_max"] = u.is_ratio_max;
    m[s.loss.rollout_is_mode == RolloutIsMode::Truncate ? "rollout_is/truncated_fraction" : "rollout_is/masked_fraction"] =
        u.is_clipped;
  }
  if (s.advantages.dynamic_sampling) {
    m["gen_batches"] = b.gen_batches;
    m["kept_groups"] = b.kept_groups;
  }
  if (b.draft_tokens > 0) m["rollout/draft_acceptance"] = (double)b.accepted_drafts / b.draft_tokens;
  if (b.time_fp8_quantize >= 0) m["rollout/fp8_quantize_s"] = b.time_fp8_quantize;
  return m;
}

std::string progress_line(const json& m, int64_t step, int64_t max_steps, double per_step, double eta) {
  char buf[320];
  snprintf(buf, sizeof buf,
           "step %lld/%lld  reward %.3f  acc %.3f  kl %.4f  len %.1f  %.2f s/step  ETA %s  [rollout %.2f reward %.2f "
           "train %.2f]",
           (long long)step, (long long)max_steps, m["reward"].get<double>(), m["accuracy"].get<double>(),
           m["kl"].get<double>(), m["completions/mean_length"].get<double>(), per_step, format_duration(eta).c_str(),
           m["time_rollout"].get<double>(), m["time_reward"].get<double>(), m["time_train"].get<double>());
  return buf;
}

}  // namespace grpo::trainer

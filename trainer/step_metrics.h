// What one GRPO step measured, and its metric names. Names follow TRL's GRPOTrainer where it has
// one (reward, reward_std, rewards/<name>/mean, kl, entropy, grad_norm, frac_reward_zero_std,
// completions/*, clip_ratio/*, num_tokens, learning_rate), plus grpo's own (accuracy, time_*,
// rollout_logprob_diff, expert_load_max_over_mean, aux_loss, gen_batches, kept_groups).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "rewards/reward.h"
#include "rollout/types.h"
#include "trainer/recipe.h"

namespace grpo::trainer {

// The `math` component when the reward has one (the task's correctness); none for a sample scored by
// a reward model (a preference, not right or wrong); else the whole reward.
std::optional<double> accuracy_of(const rewards::RewardResult& result);

struct EvalResult {
  double accuracy = NAN, reward = NAN;  // greedy, one completion per prompt
  // k samples per prompt at the recipe's temperature (eval_num_generations > 0)
  double sampled_accuracy = NAN, sampled_reward = NAN, pass_at_k = NAN;
  void add_to(nlohmann::json& m) const;
  std::string describe() const;
};

// One step's training data: the kept groups' sequences, and statistics over every sample drawn.
struct RolloutBatch {
  std::vector<std::vector<int64_t>> prompts, completions;  // non-empty completions of kept groups
  std::vector<at::Tensor> old_logp;                        // (C_i) fp32: pi_old (the rollout's)
  std::vector<std::vector<int16_t>> routed_experts;        // routing_replay: each sample's record (Completion's)
  std::vector<double> advantages;
  // Over every sampled completion:
  std::vector<double> rewards;
  std::map<std::string, double> component_sums;
  std::map<std::string, int64_t> component_counts;
  double accuracy_sum = 0, length_sum = 0;
  int64_t accuracy_count = 0;  // samples with a right-or-wrong score (not reward-model scored)
  int64_t truncated = 0, reward_errors = 0, length_min = -1, length_max = 0;
  int64_t groups = 0, zero_std_groups = 0, kept_groups = 0, gen_batches = 0;
  int64_t draft_tokens = 0, accepted_drafts = 0;  // speculative_mtp: the MTP drafts checked and kept
  double time_fp8_quantize = -1;  // rollout_quantization fp8: seconds spent refilling the FP8 copies (-1: off)
  int64_t tokens = 0;                        // prompt + completion tokens trained on
  std::vector<std::string> samples;          // the step's first few completions, as markdown
  double time_rollout = 0, time_reward = 0;  // seconds
  int64_t position_end = 0;                  // the data position after the prompts drawn
  // async_rollout: the updates the sampling weights had seen, and the seconds the trainer waited
  // for the batch (-1: synchronous rollout).
  int64_t weights_step = -1;
  double time_wait = -1;
  void add_sample(const rewards::RewardResult& result, const rollout::Completion& completion,
                  const std::string& prompt, const std::string& reference);
};

struct UpdateStats {
  double loss = 0, kl = 0, entropy = 0, grad_norm = 0, aux_loss = 0, expert_spread = 0;
  double mtp_loss = 0;  // mtp_loss_weight: the MTP modules' mean cross-entropy on the completions (before the weight)
  double clip_fraction = 0, clip_low = 0, clip_high = 0;  // shares of completion tokens
  // Mean |log pi_train - log pi_rollout| per token before the first update: how far the training
  // forward is from the engine's sampling-time log-probs (bf16 kernels differ; 0 up to fp32 noise).
  double rollout_logprob_diff = 0;
  double rollout_logprob_diff_p50 = 0, rollout_logprob_diff_p99 = 0, rollout_logprob_diff_max = 0;  // its spread
  // False where exact_rollout took the engine's values for the training forward's (equal by
  // construction, so there was nothing to measure): the step logs no rollout_logprob_diff.
  bool logprob_diff_measured = true;
  // Model FLOPs of the update (model/flops.h): reference and recomputed old log-probs (forward),
  // and every iteration's forward and backward.
  double model_flops = 0;
  // Several ranks with overlap_grad_reduce: the share of gradient bytes whose collective started
  // during the backward pass (-1: not measured).
  double grad_comm_overlap = -1;
  // rollout_is: the ratio pi_old / pi_rollout over real tokens (mean, extremes) and the share of
  // tokens whose weight was truncated or masked.
  double is_ratio_mean = 0, is_ratio_min = 0, is_ratio_max = 0, is_clipped = 0;
  // routing_replay: the share of (real token, MoE layer) whose own top-k in the first training
  // forward equals the rollout's (the agreement without replay; with it, 1 by construction), and
  // the size of the step's records.
  double routing_agreement = -1, routing_replay_mb = 0;  // routing_replay_mb: the records held (replay, exact_rollout)
};

// The step's metrics (without "step" and the run's running total "num_tokens").
nlohmann::json step_metrics(const RolloutBatch& batch, const UpdateStats& update, double learning_rate,
                            double time_train, const StageSettings& settings);

// "step 12/1000  reward 0.412  acc 0.400  kl 0.0000  len 5.2  0.25 s/step  ETA 4:07  [rollout ...]".
std::string progress_line(const nlohmann::json& metrics, int64_t step, int64_t max_steps, double seconds_per_step,
                          double eta_seconds);

}  // namespace grpo::trainer

// Settings of the GRPO objective, torch-free so that recipes can hold them (the math is in
// trainer/grpo_loss.h).
#pragma once

#include <cstdint>
#include <string>

namespace grpo::trainer {

enum class LossType { Grpo, Dapo, DrGrpo };
enum class KlEstimator { K1, K2, K3 };
// Importance sampling of the rollout engine's samples (pi_rollout) towards the training forward's
// pi_old: per token, per sequence, or per sequence with the geometric mean of the token ratios.
enum class RolloutIs { Off, Token, Sequence, Geometric };
enum class RolloutIsMode { Truncate, Mask };  // TIS: min(ratio, C); masked IS (icepop): 0 outside [1/C, C]

LossType parse_loss_type(const std::string& s);        // "grpo" | "dapo" (or "bnpo") | "dr_grpo"; throws grpo::Error
KlEstimator parse_kl_estimator(const std::string& s);  // "k1" | "k2" | "k3"
RolloutIs parse_rollout_is(const std::string& s);            // "off" | "token" | "sequence" | "geometric"
RolloutIsMode parse_rollout_is_mode(const std::string& s);   // "truncate" | "mask"
std::string to_string(LossType t);
std::string to_string(KlEstimator k);
std::string to_string(RolloutIs r);
std::string to_string(RolloutIsMode m);

struct AdvantageConfig {
  bool scale_rewards = true;  // divide by the std (off: Dr. GRPO)
  bool batch_std = false;     // std over the whole batch instead of each group
  double eps = 1e-4;
};

struct LossConfig {
  LossType type = LossType::Dapo;
  double epsilon_low = 0.2, epsilon_high = 0.2;
  double beta = 0.0;  // 0: no KL term and no reference model
  KlEstimator kl = KlEstimator::K3;
  int64_t max_completion_length = 0;  // dr_grpo's normaliser; 0 = the mask's width
  RolloutIs rollout_is = RolloutIs::Off;
  RolloutIsMode rollout_is_mode = RolloutIsMode::Truncate;
  double rollout_is_threshold = 2.0;  // C
};

}  // namespace grpo::trainer

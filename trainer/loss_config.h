// Settings of the GRPO objective, torch-free so that recipes can hold them (the math is in
// trainer/grpo_loss.h).
#pragma once

#include <cstdint>
#include <string>

namespace grpo::trainer {

enum class LossType { Grpo, Dapo, DrGrpo };
enum class KlEstimator { K1, K2, K3 };

LossType parse_loss_type(const std::string& s);        // "grpo" | "dapo" (or "bnpo") | "dr_grpo"; throws grpo::Error
KlEstimator parse_kl_estimator(const std::string& s);  // "k1" | "k2" | "k3"
std::string to_string(LossType t);
std::string to_string(KlEstimator k);

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
};

}  // namespace grpo::trainer

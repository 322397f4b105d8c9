#include "trainer/loss_config.h"

#include "util/error.h"

namespace grpo::trainer {

LossType parse_loss_type(const std::string& s) {
  if (s == "grpo") return LossType::Grpo;
  if (s == "dapo" || s == "bnpo") return LossType::Dapo;
  if (s == "dr_grpo") return LossType::DrGrpo;
  throw Error("loss_type '" + s + "': expected grpo, dapo or dr_grpo");
}

KlEstimator parse_kl_estimator(const std::string& s) {
  if (s == "k1") return KlEstimator::K1;
  if (s == "k2") return KlEstimator::K2;
  if (s == "k3") return KlEstimator::K3;
  throw Error("kl_estimator '" + s + "': expected k1, k2 or k3");
}

RolloutIs parse_rollout_is(const std::string& s) {
  if (s == "off" || s == "false") return RolloutIs::Off;
  if (s == "token") return RolloutIs::Token;
  if (s == "sequence") return RolloutIs::Sequence;
  if (s == "geometric") return RolloutIs::Geometric;
  throw Error("rollout_is '" + s + "': expected off, token, sequence or geometric");
}

RolloutIsMode parse_rollout_is_mode(const std::string& s) {
  if (s == "truncate") return RolloutIsMode::Truncate;
  if (s == "mask") return RolloutIsMode::Mask;
  throw Error("rollout_is_mode '" + s + "': expected truncate or mask");
}

std::string to_string(RolloutIs r) {
  return r == RolloutIs::Off ? "off" : r == RolloutIs::Token ? "token" : r == RolloutIs::Sequence ? "sequence" : "geometric";
}
std::string to_string(RolloutIsMode m) { return m == RolloutIsMode::Truncate ? "truncate" : "mask"; }

std::string to_string(LossType t) { return t == LossType::Grpo ? "grpo" : t == LossType::Dapo ? "dapo" : "dr_grpo"; }
std::string to_string(KlEstimator k) { return k == KlEstimator::K1 ? "k1" : k == KlEstimator::K2 ? "k2" : "k3"; }

}  // namespace grpo::trainer

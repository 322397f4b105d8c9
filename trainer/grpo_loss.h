// The GRPO objective: group-normalised advantages and the clipped, KL-regularised policy loss,
// with the aggregations of TRL's GRPO ("grpo"), DAPO ("dapo") and Dr. GRPO ("dr_grpo").
//
//   A_i      = (r_i - mean(r_group)) / (std(r_group) + eps)      (std: unbiased, over the group or
//              the whole batch; no division when scale_rewards is off: Dr. GRPO)
//   ratio_t  = exp(logp_t - old_logp_t)
//   l_t      = -min(ratio_t A, clip(ratio_t, 1 - epsilon_low, 1 + epsilon_high) A) + beta KL_t
//   KL_t     = k1: logp - ref;  k2: (logp - ref)^2 / 2;  k3: exp(ref - logp) - (ref - logp) - 1
// With rollout_is, the policy term of l_t is weighted by w (no gradient), from the training
// forward's pi_old over the engine's pi_rollout:
//   token:     rho_t = exp(old_t - rollout_t)
//   sequence:  rho   = exp(sum_t m_t (old_t - rollout_t))            (one weight per sequence)
//   geometric: rho   = exp(sum_t m_t (old_t - rollout_t) / sum_t m_t)
//   (the log-ratio clamped to [-20, 20] first)
//   truncate:  w = min(rho, C)                       (TIS)
//   mask:      w = rho if 1/C <= rho <= C, else 0    (masked IS, "icepop")
//   loss     = grpo:    mean over sequences of (sum_t m_t l_t / sum_t m_t)
//              dapo:    sum m l / sum m                       (token mean over the batch)
//              dr_grpo: sum m l / (B * max_completion_length)  (a constant normaliser)
// Works in any floating dtype; differentiable with respect to logp.
#pragma once

#include <ATen/ATen.h>

#include "trainer/loss_config.h"

namespace grpo::trainer {

// rewards (N) with N = groups * G, samples of a group contiguous -> advantages (N).
at::Tensor group_advantages(const at::Tensor& rewards, int64_t group_size, const AdvantageConfig& config = {});

struct LossInputs {
  at::Tensor logp;        // (B, T) current policy log-probs of the completion tokens
  at::Tensor old_logp;    // (B, T) at sampling time (pi_old); detached
  at::Tensor ref_logp;    // (B, T) reference model; undefined when beta == 0
  at::Tensor mask;        // (B, T) 1 for completion tokens, 0 for padding (and masked truncations)
  at::Tensor advantages;  // (B)
  at::Tensor rollout_logp;  // (B, T) the rollout engine's log-probs; needed with rollout_is
};

// The loss's statistics over the real tokens, in LossOutput::stats (float64, on the loss's device,
// so that computing them costs no host synchronisation): counts and sums, turned into the logged
// shares and means by LossStats.
enum LossStat : int64_t {
  kTokens,        // real tokens
  kClipped,       // tokens where the clipped term was chosen
  kClippedLow,    // ratio < 1 - eps_low with A < 0
  kClippedHigh,   // ratio > 1 + eps_high with A > 0
  kRatioSum,      // sum of the ratio pi / pi_old
  kKlSum,         // sum of the per-token KL (0 when beta == 0)
  kIsRatioSum,    // rollout_is: sum of rho (each token counts its sequence's rho under sequence/geometric)
  kIsRatioMin,    // rollout_is: smallest and largest rho
  kIsRatioMax,
  kIsClipped,     // rollout_is: tokens whose rho was truncated or masked
  kLossStatCount
};

struct LossOutput {
  at::Tensor loss;   // scalar
  at::Tensor stats;  // (kLossStatCount) float64
};

// Shares and means per real token, from the kLossStatCount values of LossOutput::stats.
struct LossStats {
  explicit LossStats(const double* stats);
  double clip_fraction = 0;  // share of masked tokens where the clipped term was chosen
  double clip_low_fraction = 0, clip_high_fraction = 0;
  double kl = 0;             // mean KL per masked token (0 when beta == 0)
  double ratio_mean = 0;
  double is_ratio_mean = 0, is_ratio_min = 0, is_ratio_max = 0, is_clipped_fraction = 0;  // rollout_is
};

LossOutput grpo_loss(const LossInputs& in, const LossConfig& config);

// DeepSeek-V3's complementary sequence-wise balance loss for one MoE layer (its eqs. 17-20), over
// the real tokens of each sequence (T_b = sum_t mask):
//   s'_t   = s_t / sum_j s_{t,j}                              (normalised gate scores)
//   f_i    = E / (k T_b) * #{t : expert i among the k chosen for t}
//   P_i    = (1 / T_b) * sum_t s'_{t,i}
//   loss   = alpha * mean over sequences of sum_i f_i P_i
// scores (B*T, E) gate scores (differentiable), experts (B*T, k) int64, mask (B, T).
at::Tensor sequence_aux_loss(const at::Tensor& scores, const at::Tensor& experts, const at::Tensor& mask, double alpha);

// Tokens routed to each expert, counting only mask == 1 tokens: experts (B*T, k), mask (B, T) -> (E) fp32.
at::Tensor expert_load(const at::Tensor& experts, const at::Tensor& mask, int64_t num_experts);

}  // namespace grpo::trainer

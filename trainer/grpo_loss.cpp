#include "trainer/grpo_loss.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <vector>

#include "util/error.h"

namespace grpo::trainer {

using at::Tensor;

Tensor group_advantages(const Tensor& rewards, int64_t G, const AdvantageConfig& c) {
  if (G < 1 || rewards.numel() % G != 0)
    throw Error("group_advantages: " + std::to_string(rewards.numel()) + " rewards do not split into groups of " +
                std::to_string(G));
  Tensor r = rewards.view({-1, G});
  Tensor centered = (r - r.mean(1, true)).reshape({-1});
  if (!c.scale_rewards) return centered;
  Tensor std = c.batch_std ? rewards.std().expand({rewards.numel()})
                           : r.std(1, /*unbiased=*/true, true).expand({r.size(0), G}).reshape({-1});
  if (G == 1 && !c.batch_std) std = at::zeros_like(std);  // one sample: no spread
  return centered / (std + c.eps);
}

LossOutput grpo_loss(const LossInputs& in, const LossConfig& c) {
  const Tensor& m = in.mask;
  Tensor A = in.advantages.unsqueeze(1);
  Tensor ratio = (in.logp - in.old_logp).exp();
  Tensor unclipped = ratio * A;
  Tensor clipped = ratio.clamp(1 - c.epsilon_low, 1 + c.epsilon_high) * A;
  Tensor per_token = -at::min(unclipped, clipped);
  Tensor rho, is_weight;  // rollout_is: (B, T) or (B, 1), no gradient
  if (c.rollout_is != RolloutIs::Off) {
    if (!in.rollout_logp.defined()) throw Error("grpo_loss: rollout_is needs the rollout engine's log-probs");
    Tensor d = ((in.old_logp - in.rollout_logp) * m).detach();
    Tensor log_rho = c.rollout_is == RolloutIs::Token      ? d
                     : c.rollout_is == RolloutIs::Sequence ? d.sum(1, true)
                                                           : d.sum(1, true) / m.sum(1, true).clamp_min(1);
    rho = log_rho.clamp(-20, 20).exp();
    const double C = c.rollout_is_threshold;
    is_weight = c.rollout_is_mode == RolloutIsMode::Truncate ? rho.clamp_max(C) : rho * ((rho >= 1.0 / C) & (rho <= C));
    per_token = per_token * is_weight;
  }
  Tensor kl;
  if (c.beta != 0) {
    if (!in.ref_logp.defined()) throw Error("grpo_loss: beta != 0 needs reference log-probs");
    Tensor d = in.ref_logp - in.logp;
    switch (c.kl) {
      case KlEstimator::K1: kl = -d; break;
      case KlEstimator::K2: kl = 0.5 * d * d; break;
      case KlEstimator::K3: kl = d.exp() - d - 1; break;
    }
    per_token = per_token + c.beta * kl;
  }
  Tensor masked = per_token * m;
  Tensor loss;
  switch (c.type) {
    case LossType::Grpo: loss = (masked.sum(1) / m.sum(1).clamp_min(1)).mean(); break;
    case LossType::Dapo: loss = masked.sum() / m.sum().clamp_min(1); break;
    case LossType::DrGrpo: {
      const int64_t L = c.max_completion_length > 0 ? c.max_completion_length : m.size(1);
      loss = masked.sum() / static_cast<double>(m.size(0) * L);
      break;
    }
  }
  LossOutput out;
  out.loss = loss;
  {
    c10::NoGradGuard g;
    Tensor real = m > 0, zero = at::zeros({}, m.options().dtype(at::kDouble));
    auto count = [&](const Tensor& which) { return (which & real).to(m.scalar_type()).sum(); };
    // TRL's clip_ratio/low_mean and high_mean: the ratio beyond the range on the side that clips.
    Tensor low = (ratio < 1 - c.epsilon_low) & (A < 0), high = (ratio > 1 + c.epsilon_high) & (A > 0);
    std::vector<Tensor> s = {m.sum(), count(clipped < unclipped), count(low), count(high), (ratio * m).sum(),
                             kl.defined() ? (kl * m).sum() : zero};
    if (rho.defined()) {
      Tensor r = rho.expand_as(m), w = is_weight.expand_as(m);
      s.insert(s.end(), {(r * m).sum(), at::where(real, r, at::full_like(r, 1e30)).min(),
                         at::where(real, r, at::full_like(r, -1e30)).max(), count(w != r)});
    } else {
      s.insert(s.end(), {zero, zero, zero, zero});
    }
    for (Tensor& t : s) t = t.to(at::kDouble);
    out.stats = at::stack(s);
  }
  return out;
}

LossStats::LossStats(const double* v) {
  const double n = std::max(1.0, v[kTokens]);
  clip_fraction = v[kClipped] / n;
  clip_low_fraction = v[kClippedLow] / n;
  clip_high_fraction = v[kClippedHigh] / n;
  ratio_mean = v[kRatioSum] / n;
  kl = v[kKlSum] / n;
  is_ratio_mean = v[kIsRatioSum] / n;
  is_ratio_min = v[kIsRatioMin];
  is_ratio_max = v[kIsRatioMax];
  is_clipped_fraction = v[kIsClipped] / n;
}

Tensor sequence_aux_loss(const Tensor& scores, const Tensor& experts, const Tensor& mask, double alpha) {
  const int64_t B = mask.size(0), T = mask.size(1), E = scores.size(1), k = experts.size(1);
  Tensor m = mask.to(scores.scalar_type());                                  // (B, T)
  Tensor len = m.sum(1).clamp_min(1);                                        // (B)
  Tensor s = scores.view({B, T, E});
  Tensor normalised = s / s.sum(-1, true);
  Tensor P = (normalised * m.unsqueeze(-1)).sum(1) / len.unsqueeze(1);       // (B, E)
  Tensor chosen = at::zeros({B, E}, m.options())
                      .scatter_add_(1, experts.view({B, T * k}), m.unsqueeze(-1).expand({B, T, k}).reshape({B, T * k}));
  Tensor f = chosen * ((double)E / k) / len.unsqueeze(1);                   // (B, E), no gradient
  return (f * P).sum(1).mean() * alpha;
}

Tensor expert_load(const Tensor& experts, const Tensor& mask, int64_t num_experts) {
  const int64_t k = experts.size(1);
  Tensor w = mask.reshape({-1, 1}).expand({mask.numel(), k}).reshape({-1}).to(at::kFloat).to(experts.device());
  return at::zeros({num_experts}, w.options()).index_add_(0, experts.reshape({-1}), w);
}

}  // namespace grpo::trainer

#include "rollout/speculative.h"

#include <ATen/ATen.h>
#include <ATen/ops/searchsorted.h>

#include "rollout/sampling.h"
#include "rollout/upload.h"

namespace grpo::rollout {

using at::Tensor;

Tensor sampling_probs(const Tensor& logits, const std::vector<float>& temperature, const std::vector<int64_t>& top_k,
                      const std::vector<float>& top_p) {
  const int64_t B = logits.size(0), V = logits.size(1);
  const auto dev = logits.device();
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  std::vector<float> packed(4 * B);
  for (int64_t b = 0; b < B; ++b) {
    const bool greedy = temperature[b] == 0;
    packed[b] = greedy ? 1.0f : temperature[b];
    packed[B + b] = (float)(top_k[b] > 0 && top_k[b] < V ? top_k[b] : V);
    packed[2 * B + b] = top_p[b];
    packed[3 * B + b] = greedy ? 1.0f : 0.0f;
  }
  Tensor settings = upload(at::from_blob(packed.data(), {4, B, 1}, f32), dev);
  Tensor temp = settings[0], kk = settings[1], pp = settings[2], greedy = settings[3].to(at::kBool);
  Tensor probs = (logits / temp).softmax(-1);
  Tensor onehot = at::zeros_like(probs).scatter_(1, logits.argmax(-1, true), 1.0);
  bool filter = false;
  for (int64_t b = 0; b < B; ++b) filter |= packed[B + b] < V || top_p[b] < 1;
  if (!filter) return at::where(greedy, onehot, probs);
  // The same filter as sample_tokens, undone into vocabulary order.
  auto sorted = probs.sort(-1, /*descending=*/true);
  Tensor kept = at::zeros_like(probs).scatter_(1, std::get<1>(sorted), keep_nucleus(std::get<0>(sorted), kk, pp));
  kept = kept / kept.sum(-1, true);
  return at::where(greedy, onehot, kept);
}

Tensor sample_from(const Tensor& probs, const Tensor& uniform) {
  const int64_t V = probs.size(1);
  Tensor cdf = probs.cumsum(-1);
  Tensor u = uniform.to(probs.device(), at::kFloat).view({-1, 1});
  Tensor pick = at::searchsorted(cdf, u * cdf.narrow(1, V - 1, 1), false, /*right=*/true).clamp_max(V - 1);
  // Rounding can put the target past the last token of positive mass: take the most likely one.
  return at::where(probs.gather(1, pick) > 0, pick, probs.argmax(-1, true)).squeeze(1);
}

SpeculativeVerdict accept_or_resample(const Tensor& p, const Tensor& q, const Tensor& draft, const Tensor& u_accept,
                                      const Tensor& u_residual) {
  Tensor d = draft.view({-1, 1});
  Tensor pd = p.gather(1, d).squeeze(1), qd = q.gather(1, d).squeeze(1);
  // u < p(d) / q(d), without dividing: q(d) > 0 for a token drawn from q.
  Tensor accepted = u_accept.to(p.device(), at::kFloat) * qd < pd;
  Tensor residual = (p - q).clamp_min(0);
  // p == q leaves no residual mass, but then every draft is accepted; p stands in so that the
  // (unused) draw stays defined.
  residual = at::where(residual.sum(-1, true) > 0, residual, p);
  Tensor other = sample_from(residual, u_residual);
  return {at::where(accepted, draft, other), accepted};
}

float stream_uniform(int stream, uint64_t seed, int64_t prompt_index, int64_t sample_index, int64_t j) {
  return sample_uniform(seed + static_cast<uint64_t>(stream) * 0xd1b54a32d192ed03ULL, prompt_index, sample_index, j);
}

}  // namespace grpo::rollout

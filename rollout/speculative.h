// Speculative sampling's acceptance rule (Leviathan et al., 2023; Chen et al., 2023), as the
// rollout engine applies it with DeepSeek-V3's MTP module as the draft: a draft token d drawn from
// the draft's distribution q is kept with probability min(1, p(d) / q(d)) under the policy's
// distribution p; otherwise a token is drawn from max(0, p - q), renormalised. Whatever q is, the
// kept token follows p exactly, so GRPO's samples stay on-policy; a good draft only makes them cheaper.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace grpo::rollout {

// What sample_tokens draws from, per row, in vocabulary order: softmax(logits / temperature) kept to
// the top_k most likely tokens, then to the top_p nucleus, renormalised; one-hot at the argmax where
// the temperature is 0. logits (B, V) fp32 -> (B, V) fp32.
at::Tensor sampling_probs(const at::Tensor& logits, const std::vector<float>& temperature,
                          const std::vector<int64_t>& top_k, const std::vector<float>& top_p);

// One token per row of `probs` (B, V), non-negative rows with positive mass (need not sum to 1),
// by inverse CDF in vocabulary order with uniform[b] in [0, 1); never a token of probability 0.
at::Tensor sample_from(const at::Tensor& probs, const at::Tensor& uniform);

struct SpeculativeVerdict {
  at::Tensor token;     // (B) int64: the draft where accepted, else the residual's draw
  at::Tensor accepted;  // (B) bool
};
// p, q (B, V) distributions of the policy and the draft, draft (B) int64 drawn from q; u_accept and
// u_residual (B) fp32 uniforms in [0, 1), independent of the draft's.
SpeculativeVerdict accept_or_resample(const at::Tensor& p, const at::Tensor& q, const at::Tensor& draft,
                                      const at::Tensor& u_accept, const at::Tensor& u_residual);

// The engine's random streams: stream 0 is the plain sampling's (sample_uniform); speculative
// decoding draws its draft, acceptance and residual numbers from streams 1, 2 and 3 at the index of
// the token being decided, so every number is used once and samples stay reproducible by seed.
float stream_uniform(int stream, uint64_t seed, int64_t prompt_index, int64_t sample_index, int64_t j);

}  // namespace grpo::rollout

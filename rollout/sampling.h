// Token sampling of the rollout engine: temperature, top-k and top-p filtering, then inverse-CDF
// sampling with a uniform number that depends only on (seed, prompt, sample, position), so that
// what a sample draws does not depend on which other sequences share its batch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace grpo::rollout {

// Filters and samples one token per row. logits (B, V) fp32; per row: temperature (0 = greedy),
// top_k (0 = off), top_p, and a uniform number in [0, 1). Returns the tokens (B) int64 and their
// log-probabilities under softmax(logits) (B) fp32, on the logits' device.
std::pair<at::Tensor, at::Tensor> sample_tokens(const at::Tensor& logits, const std::vector<float>& temperature,
                                                const std::vector<int64_t>& top_k, const std::vector<float>& top_p,
                                                const std::vector<float>& uniform);

// Probabilities sorted in descending order (B, V) with what top-k and then top-p drop set to 0:
// the first kk[b] (B, 1) kept, then the smallest prefix whose mass before each kept token is below
// pp[b] (B, 1) of the kept mass (transformers' and vLLM's order: temperature, top-k, top-p).
at::Tensor keep_nucleus(const at::Tensor& sorted_probs, const at::Tensor& kk, const at::Tensor& pp);

// The uniform number for token j of sample s of prompt p under `seed`, in [0, 1 - 2^-24].
float sample_uniform(uint64_t seed, int64_t prompt_index, int64_t sample_index, int64_t j);

}  // namespace grpo::rollout

// What the engine tests check of completions against the trainer's recompute.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "model/causal_lm.h"
#include "rollout/types.h"

namespace grpo::testing {

// max and mean |engine log-prob - CausalLM::completion_logprobs| over every completion token of
// `cs`, whose prompts are those of `rs` by prompt_index.
inline std::pair<double, double> logprob_gap(model::CausalLM& m, const std::vector<rollout::Request>& rs,
                                             const std::vector<rollout::Completion>& cs) {
  std::vector<std::vector<int64_t>> ps, comps;
  for (const auto& c : cs) {
    ps.push_back(rs[c.prompt_index].prompt_ids);
    comps.push_back(c.token_ids);
  }
  at::NoGradGuard g;
  auto ref = m.completion_logprobs(ps, comps);
  double worst = 0, sum = 0;
  int64_t n = 0;
  for (size_t i = 0; i < cs.size(); ++i) {
    at::Tensor r = ref[i].to(at::kCPU, at::kDouble).contiguous();
    if (r.numel() != (int64_t)cs[i].logprobs.size() || cs[i].logprobs.size() != cs[i].token_ids.size())
      return {INFINITY, INFINITY};  // a completion whose log-probs do not match its tokens
    for (int64_t j = 0; j < r.numel(); ++j) {
      const double d = std::fabs((double)cs[i].logprobs[j] - r.data_ptr<double>()[j]);
      worst = std::max(worst, d);
      sum += d;
      ++n;
    }
  }
  return {worst, sum / std::max<int64_t>(1, n)};
}

}  // namespace grpo::testing

// What the engine tests check of completions against the trainer's recompute.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "model/causal_lm.h"
#include "rollout/types.h"

namespace grpo::testing {

// `count` prompts of random tokens below `vocab`, of lengths in [min_len, max_len].
inline std::vector<std::vector<int64_t>> prompts(int count, int min_len, int max_len, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int64_t>> out;
  for (int i = 0; i < count; ++i) {
    int len = min_len + (int)(rng() % (max_len - min_len + 1));
    std::vector<int64_t> p;
    for (int t = 0; t < len; ++t) p.push_back(rng() % vocab);
    out.push_back(p);
  }
  return out;
}

// One request per prompt, all with `sp`.
inline std::vector<rollout::Request> requests(const std::vector<std::vector<int64_t>>& ps, const rollout::SamplingParams& sp) {
  std::vector<rollout::Request> rs;
  for (size_t i = 0; i < ps.size(); ++i) rs.push_back({(int64_t)i, ps[i], sp});
  return rs;
}

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

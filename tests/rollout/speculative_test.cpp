// Speculative decoding with the MTP module as the draft: the acceptance rule keeps tokens
// distributed as the policy's (chi-square, on the rule alone and on the engine's samples two and
// three tokens deep), greedy decoding is unchanged, and the returned log-probs are the policy's.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <random>

#include "common/chi_square.h"
#include "common/engine_checks.h"
#include "common/tiny_models.h"
#include "rollout/engine.h"
#include "rollout/speculative.h"
#include "util/error.h"

using namespace grpo;
using namespace grpo::rollout;
using at::Tensor;
using grpo::testing::kTinyV3;
using grpo::testing::logprob_gap;
using grpo::testing::with_mtp_modules;
using grpo::testing::with_paged_mla_widths;
using grpo::testing::tiny;

namespace {

const std::string kTinyV3Mtp = with_mtp_modules(kTinyV3, 1);

std::vector<double> to_vector(const Tensor& t) {
  Tensor c = t.to(at::kDouble).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

// The filtered sampling distribution of logits z (V), computed here in double: temperature, the
// top_k most likely, then the smallest prefix whose mass before each kept token is below top_p.
std::vector<double> filtered(const Tensor& z, double temperature, int64_t top_k, double top_p) {
  std::vector<double> p = to_vector((z.to(at::kDouble) / temperature).softmax(-1));
  const int64_t V = (int64_t)p.size();
  std::vector<int64_t> order(V);
  for (int64_t i = 0; i < V; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  const int64_t k = top_k > 0 ? std::min(top_k, V) : V;
  double mass_k = 0, before = 0, kept = 0;
  for (int64_t r = 0; r < k; ++r) mass_k += p[order[r]];
  std::vector<double> out(V, 0.0);
  for (int64_t r = 0; r < k; ++r) {
    if (r > 0 && before / mass_k >= top_p) break;
    out[order[r]] = p[order[r]];
    kept += p[order[r]];
    before += p[order[r]];
  }
  for (auto& x : out) x /= kept;
  return out;
}

// `drafts`: num_speculative_tokens.
std::vector<Completion> run(std::shared_ptr<model::CausalLM> m, const std::vector<Request>& rs, bool speculative,
                            EngineStats* stats = nullptr, int64_t block_size = 4, int64_t drafts = 1) {
  EngineOptions o;
  o.block_size = block_size;
  o.max_batch = 512;
  o.kv_cache_bytes = 160 << 20;
  o.speculative_mtp = speculative;
  o.num_speculative_tokens = drafts;
  Engine e(std::move(m), nullptr, o);
  auto cs = e.generate(rs);
  if (stats) *stats = e.stats();
  EXPECT_EQ(e.blocks_in_use(), 0);
  return cs;
}

std::vector<Request> random_requests(int count, int min_len, int max_len, const SamplingParams& sp, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Request> rs;
  for (int i = 0; i < count; ++i) {
    std::vector<int64_t> p(min_len + rng() % (max_len - min_len + 1));
    for (auto& t : p) t = rng() % 97;
    rs.push_back({i, p, sp});
  }
  return rs;
}

// 12 greedy requests of 1-40 prompt tokens, 30 new tokens each.
std::vector<Request> greedy_requests() {
  SamplingParams sp;
  sp.temperature = 0;
  sp.max_new_tokens = 30;
  return random_requests(12, 1, 40, sp, 3);
}

}  // namespace

TEST(SpeculativeRule, KeptTokensFollowThePolicy) {
  // p and q unlike each other, q with zeros where p has mass (those tokens come only from the residual).
  const int64_t N = 400000, V = 12;
  at::manual_seed(5);
  Tensor p = at::rand({V}, at::kDouble).pow(2);
  Tensor q = at::rand({V}, at::kDouble);
  q.narrow(0, 0, 3).zero_();
  p = p / p.sum();
  q = q / q.sum();
  Tensor P = p.to(at::kFloat).unsqueeze(0).expand({N, V}).contiguous();
  Tensor Q = q.to(at::kFloat).unsqueeze(0).expand({N, V}).contiguous();
  Tensor draft = sample_from(Q, at::rand({N}));
  SpeculativeVerdict v = accept_or_resample(P, Q, draft, at::rand({N}), at::rand({N}));
  auto counts = [&](const Tensor& tokens) { return to_vector(at::bincount(tokens, {}, V)); };
  int bins = 0;
  const double pv = chi_square_pvalue(counts(v.token), to_vector(p), &bins);
  const double rate = v.accepted.to(at::kDouble).mean().item<double>();
  const double expected_rate = at::minimum(p, q).sum().item<double>();
  std::cout << "kept tokens vs p: chi-square p = " << pv << " over " << bins << " bins; acceptance " << rate
            << " (sum min(p, q) = " << expected_rate << ")\n";
  EXPECT_GT(pv, 1e-3);
  EXPECT_NEAR(rate, expected_rate, 4 * std::sqrt(expected_rate * (1 - expected_rate) / N));
  // The statistic can fail: the drafts themselves follow q, not p.
  EXPECT_LT(chi_square_pvalue(counts(draft), to_vector(p)), 1e-6);
}

TEST(SpeculativeRule, GreedyKeepsTheArgmax) {
  Tensor logits = at::randn({64, 30});
  std::vector<float> t(64, 0.0f), tp(64, 1.0f);
  std::vector<int64_t> tk(64, 0);
  Tensor p = sampling_probs(logits, t, tk, tp);
  Tensor draft_logits = logits.clone();
  draft_logits.narrow(0, 0, 32).normal_();  // half the drafts disagree
  Tensor q = sampling_probs(draft_logits, t, tk, tp);
  Tensor draft = sample_from(q, at::rand({64}));
  SpeculativeVerdict v = accept_or_resample(p, q, draft, at::rand({64}), at::rand({64}));
  EXPECT_TRUE(v.token.equal(logits.argmax(-1)));
  EXPECT_TRUE(v.accepted.equal(draft.eq(logits.argmax(-1))));
}

TEST(SpeculativeEngine, GreedyEqualsPlainGreedy) {
  auto m = tiny(kTinyV3Mtp);
  auto rs = greedy_requests();
  auto plain = run(m, rs, false);
  for (int64_t drafts : {1, 3}) {
    SCOPED_TRACE("drafts " + std::to_string(drafts));
    EngineStats st;
    auto spec = run(m, rs, true, &st, 4, drafts);
    ASSERT_EQ(plain.size(), spec.size());
    double worst = 0;
    for (size_t i = 0; i < plain.size(); ++i) {
      EXPECT_EQ(plain[i].token_ids, spec[i].token_ids) << "request " << i;
      for (size_t j = 0; j < std::min(plain[i].logprobs.size(), spec[i].logprobs.size()); ++j)
        worst = std::max(worst, (double)std::fabs(plain[i].logprobs[j] - spec[i].logprobs[j]));
    }
    std::cout << "greedy, " << drafts << " drafts a step: " << st.accepted_drafts << " of " << st.draft_tokens
              << " drafts kept, " << st.decode_steps << " steps for " << st.decode_tokens
              << " tokens; max |dlogprob| vs plain " << worst << "\n";
    EXPECT_LT(worst, 1e-5);
    EXPECT_GT(st.draft_tokens, 0);
  }
}

TEST(SpeculativeEngine, LogprobsEqualRecomputeAcrossBlocksAndBatches) {
  auto m = tiny(kTinyV3Mtp, 3);
  SamplingParams sp;
  sp.n = 4;
  sp.max_new_tokens = 40;
  sp.seed = 7;
  sp.stop_token_ids = {5};
  auto rs = random_requests(10, 1, 50, sp, 9);
  for (int64_t drafts : {1, 3}) {
    SCOPED_TRACE("drafts " + std::to_string(drafts));
    EngineStats st;
    auto cs = run(m, rs, true, &st, /*block_size=*/4, drafts);
    const double worst = logprob_gap(*m, rs, cs).first;
    std::cout << "sampled, " << drafts << " drafts a step: max |engine - recompute| " << worst << "; "
              << st.accepted_drafts << " of " << st.draft_tokens << " drafts kept, " << st.decode_tokens << " tokens in "
              << st.decode_steps << " steps\n";
    EXPECT_LT(worst, 1e-5);
    EXPECT_GT(st.accepted_drafts, 0);
    EXPECT_LT(st.accepted_drafts, st.draft_tokens);
    // Reproducible by seed, whatever else shares the batch: each request alone gives the same.
    for (size_t i = 0; i < rs.size(); i += 3) {
      auto alone = run(m, {rs[i]}, true, nullptr, 4, drafts);
      for (int64_t s = 0; s < sp.n; ++s) EXPECT_EQ(alone[s].token_ids, cs[i * sp.n + s].token_ids) << "request " << i;
    }
  }
}

// The engine's samples against the policy's exact distribution of the 2nd and 3rd completion
// tokens (the first ones a draft decides), summed over every prefix from full forwards.
struct Filter {
  double temperature;
  int64_t top_k;
  double top_p;
  int64_t drafts = 1;  // num_speculative_tokens: with 2 or more, the 3rd token comes from a chained draft
};
class SpeculativeSampling : public ::testing::TestWithParam<Filter> {};

TEST_P(SpeculativeSampling, SamplesFollowThePolicy) {
  const Filter f = GetParam();
  auto m = tiny(kTinyV3Mtp, 1.5);
  const int64_t V = 97, N = 20000;
  const std::vector<int64_t> prompt = {5, 17, 90, 25, 3};
  const int64_t P = (int64_t)prompt.size();
  // Exact marginals by enumerating (t0, t1) prefixes.
  at::NoGradGuard g;
  auto next_dist = [&](const std::vector<std::vector<int64_t>>& seqs) {
    const int64_t B = (int64_t)seqs.size(), T = (int64_t)seqs[0].size();
    std::vector<int64_t> flat;
    for (const auto& s : seqs) flat.insert(flat.end(), s.begin(), s.end());
    Tensor ids = at::tensor(flat, at::kLong).view({B, T});
    Tensor z = m->logits(m->hidden_states(ids).select(1, T - 1)).to(at::kFloat);
    std::vector<std::vector<double>> out;
    for (int64_t b = 0; b < B; ++b) out.push_back(filtered(z[b], f.temperature, f.top_k, f.top_p));
    return out;
  };
  const std::vector<double> p0 = next_dist({prompt})[0];
  std::vector<std::vector<int64_t>> one(V, prompt);
  for (int64_t t = 0; t < V; ++t) one[t].push_back(t);
  const auto p1 = next_dist(one);  // p(t1 | t0)
  std::vector<double> m1(V, 0.0), m2(V, 0.0);
  std::vector<std::vector<int64_t>> two;
  std::vector<double> weight;
  for (int64_t a = 0; a < V; ++a)
    for (int64_t b = 0; b < V; ++b) {
      m1[b] += p0[a] * p1[a][b];
      if (p0[a] * p1[a][b] > 0) {
        two.push_back(one[a]);
        two.back().push_back(b);
        weight.push_back(p0[a] * p1[a][b]);
      }
    }
  for (size_t s = 0; s < two.size(); s += 512) {
    std::vector<std::vector<int64_t>> chunk(two.begin() + s, two.begin() + std::min(two.size(), s + 512));
    auto d = next_dist(chunk);
    for (size_t i = 0; i < d.size(); ++i)
      for (int64_t c = 0; c < V; ++c) m2[c] += weight[s + i] * d[i][c];
  }
  SamplingParams sp;
  sp.n = N;
  sp.max_new_tokens = 3;
  sp.temperature = f.temperature;
  sp.top_k = f.top_k;
  sp.top_p = f.top_p;
  sp.seed = 99;
  EngineStats st;
  auto cs = run(m, {{0, prompt, sp}}, true, &st, 16, f.drafts);
  std::vector<double> c1(V, 0.0), c2(V, 0.0);
  for (const auto& c : cs) {
    ASSERT_EQ(c.token_ids.size(), 3u);
    c1[c.token_ids[1]] += 1;
    c2[c.token_ids[2]] += 1;
  }
  int b1 = 0, b2 = 0;
  const double pv1 = chi_square_pvalue(c1, m1, &b1), pv2 = chi_square_pvalue(c2, m2, &b2);
  std::cout << "T=" << f.temperature << " top_k=" << f.top_k << " top_p=" << f.top_p << " drafts=" << f.drafts
            << ": token 2 p = " << pv1
            << " (" << b1 << " bins), token 3 p = " << pv2 << " (" << b2 << " bins); " << st.accepted_drafts << " of "
            << st.draft_tokens << " drafts kept\n";
  EXPECT_GE(b1, 5);
  EXPECT_GE(b2, 5);
  EXPECT_GT(pv1, 1e-3);
  EXPECT_GT(pv2, 1e-3);
  EXPECT_GT(st.accepted_drafts, 0);
  EXPECT_LT(st.accepted_drafts, st.draft_tokens);
  (void)P;
}
INSTANTIATE_TEST_SUITE_P(Filters, SpeculativeSampling,
                         ::testing::Values(Filter{1.0, 0, 1.0}, Filter{0.8, 20, 0.9}, Filter{1.0, 0, 1.0, 3},
                                           Filter{0.8, 20, 0.9, 2}));

TEST(SpeculativeEngine, NeedsAnMtpModule) {
  EngineOptions o;
  o.speculative_mtp = true;
  o.kv_cache_bytes = 1 << 20;
  try {
    Engine e(tiny(kTinyV3), nullptr, o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MTP module"), std::string::npos) << e.what();
  }
}

TEST(SpeculativeEngineCuda, Bf16GraphsAgreeWithRecompute) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  // The second config's widths take the paged MLA kernel (the MTP layer's reads skip position 0).
  for (const std::string& cfg : {kTinyV3Mtp, with_paged_mla_widths(kTinyV3Mtp)}) {
    SCOPED_TRACE(cfg);
    auto m = tiny(cfg, 3);
    m->to_device_dtype(at::kCUDA, at::kFloat);
    auto rs = greedy_requests();
    auto plain = run(m, rs, false);
    for (int64_t drafts : {1, 3}) {
      auto spec = run(m, rs, true, nullptr, 4, drafts);
      for (size_t i = 0; i < plain.size(); ++i)
        EXPECT_EQ(plain[i].token_ids, spec[i].token_ids) << "fp32 greedy, " << drafts << " drafts, request " << i;
    }
    m->to_device_dtype(at::kCUDA, at::kBFloat16);  // graphs with the grouped-GEMM MoE
    SamplingParams sp;
    sp.max_new_tokens = 30;
    sp.n = 4;
    rs = random_requests(12, 1, 40, sp, 4);
    for (int64_t drafts : {1, 3}) {
      EngineStats st;
      auto cs = run(m, rs, true, &st, 4, drafts);
      const auto [worst, mean] = logprob_gap(*m, rs, cs);
      std::cout << "CUDA bf16 sampled, " << drafts << " drafts: |engine - recompute| mean " << mean << ", max "
                << worst << "; " << st.accepted_drafts << " of " << st.draft_tokens << " drafts kept\n";
      // bf16 products of other shapes (several rows per sequence, graph padding) round differently
      // from the recompute's: single tokens reach 0.25 on these peaked weights, the mean stays near
      // 2e-3. A wrong cache row or position moves whole nats.
      EXPECT_LT(mean, 0.01);
      EXPECT_LT(worst, 0.5);
    }
  }
}

// The rollout engine against the full forward pass: log-probs of generated tokens equal the
// trainer's recompute, greedy decoding is the argmax, samples follow the filtered distribution
// (chi-square), and prefix sharing plus continuous batching change nothing.
#include "rollout/engine.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <tuple>
#include <random>

#include "common/byte_tokenizer.h"
#include "common/chi_square.h"
#include "common/engine_checks.h"
#include "common/tiny_models.h"
#include "text/tokenizer.h"
#include "util/error.h"

using namespace grpo;
using namespace grpo::rollout;
using at::Tensor;
using grpo::testing::kTinyQwen2;
using grpo::testing::kTinyQwen3Moe;
using grpo::testing::kTinyV3;
using grpo::testing::tiny;
using grpo::testing::logprob_gap;
using grpo::testing::prompts;
using grpo::testing::requests;

namespace {

// DeepSeek-V2 style: plain q_proj, softmax greedy routing, no YaRN; the vocabulary of the byte-level
// tokenizer below (256 bytes + 2 merges).
const char* kTinyV2 = R"({
  "model_type": "deepseek_v2", "vocab_size": 258, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
  "q_lora_rank": null, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
  "n_routed_experts": 4, "n_shared_experts": 2, "num_experts_per_tok": 2, "topk_method": "greedy",
  "first_k_dense_replace": 0, "norm_topk_prob": false, "routed_scaling_factor": 1.0,
  "max_position_embeddings": 128})";

// Full-forward logits (T, V) of one sequence, fp32.
Tensor full_logits(model::CausalLM& m, const std::vector<int64_t>& ids) {
  at::NoGradGuard g;
  Tensor x = at::tensor(ids, at::kLong).unsqueeze(0);
  return m.logits(m.hidden_states(x))[0].to(at::kFloat);
}

void expect_logprobs_match_recompute(model::CausalLM& m, const std::vector<Request>& rs,
                                     const std::vector<Completion>& cs) {
  const double worst = grpo::testing::logprob_gap(m, rs, cs).first;
  EXPECT_LT(worst, 1e-4);
  std::cout << "max |engine - recompute| log-prob: " << worst << "\n";
}

}  // namespace

TEST(Sampling, UniformsDependOnlyOnTheirKey) {
  EXPECT_EQ(sample_uniform(1, 2, 3, 4), sample_uniform(1, 2, 3, 4));
  EXPECT_NE(sample_uniform(1, 2, 3, 4), sample_uniform(1, 2, 3, 5));
  EXPECT_NE(sample_uniform(1, 2, 3, 4), sample_uniform(2, 2, 3, 4));
  double mean = 0;
  for (int j = 0; j < 20000; ++j) {
    float u = sample_uniform(7, 0, 0, j);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    mean += u / 20000;
  }
  EXPECT_NEAR(mean, 0.5, 0.01);
}

class EngineLogprobs : public ::testing::TestWithParam<int> {};

// Batch sizes 1 and 16, mixed prompt lengths, G = 4: every generated token's log-prob equals the
// full forward's (the trainer's `grpo logprobs`) within 1e-4.
TEST_P(EngineLogprobs, EqualFullForwardRecompute) {
  for (const char* cfg : {kTinyV3, kTinyV2, kTinyQwen2, kTinyQwen3Moe}) {
    auto m = tiny(cfg);
    const int64_t V = m->config().vocab_size;
    EngineOptions o;
    o.max_batch = GetParam() * 4;
    o.block_size = 4;  // many block boundaries and partial prompt blocks
    Engine e(m, nullptr, o);
    SamplingParams sp;
    sp.n = 4;
    sp.max_new_tokens = 30;
    sp.seed = 11;
    auto rs = requests(prompts(GetParam(), 1, 60, V, 5), sp);
    auto cs = e.generate(rs);
    ASSERT_EQ(cs.size(), rs.size() * 4);
    for (const auto& c : cs) EXPECT_EQ(c.token_ids.size(), 30u);
    expect_logprobs_match_recompute(*m, rs, cs);
  }
}
INSTANTIATE_TEST_SUITE_P(BatchSizes, EngineLogprobs, ::testing::Values(1, 16));

TEST(Engine, GreedyIsArgmaxOfFullForward) {
  auto m = tiny(kTinyV3);
  Engine e(m, nullptr, {});
  SamplingParams sp;
  sp.temperature = 0;
  sp.n = 2;
  sp.max_new_tokens = 20;
  auto rs = requests(prompts(5, 3, 50, 97, 9), sp);
  auto cs = e.generate(rs);
  for (const auto& c : cs) {
    const auto& p = rs[c.prompt_index].prompt_ids;
    std::vector<int64_t> seq = p;
    seq.insert(seq.end(), c.token_ids.begin(), c.token_ids.end() - 1);
    Tensor lg = full_logits(*m, seq);
    for (size_t j = 0; j < c.token_ids.size(); ++j)
      ASSERT_EQ(c.token_ids[j], lg[p.size() - 1 + j].argmax().item<int64_t>()) << "prompt " << c.prompt_index << " token " << j;
    EXPECT_EQ(c.token_ids, cs[c.prompt_index * 2].token_ids);  // both greedy samples agree
  }
}

struct Filter {
  double temperature;
  int64_t top_k;
  double top_p;
};
void PrintTo(const Filter& f, std::ostream* os) { *os << "T" << f.temperature << "_k" << f.top_k << "_p" << f.top_p; }

class EngineSampling : public ::testing::TestWithParam<Filter> {};

// Frequencies of the first sampled token over 20000 samples against softmax(logits / T) after
// top-k and top-p filtering, computed here in double precision; tokens outside the kept set
// must never appear.
TEST_P(EngineSampling, FollowsTheFilteredDistribution) {
  const Filter f = GetParam();
  auto m = tiny(kTinyV2, 2.5);  // a spread-out distribution over 300 tokens
  const int64_t V = m->config().vocab_size, N = 20000;
  std::vector<int64_t> prompt = {5, 17, 99, 250, 3};
  Tensor z = full_logits(*m, prompt)[prompt.size() - 1].to(at::kDouble);
  std::vector<double> p(V);
  {
    Tensor q = (z / f.temperature).softmax(-1);
    for (int64_t i = 0; i < V; ++i) p[i] = q[i].item<double>();
  }
  std::vector<int64_t> order(V);
  for (int64_t i = 0; i < V; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  std::vector<double> expect(V, 0.0);
  const int64_t k = f.top_k > 0 ? f.top_k : V;
  double mass_k = 0;
  for (int64_t r = 0; r < k; ++r) mass_k += p[order[r]];
  double before = 0, kept = 0;
  for (int64_t r = 0; r < k; ++r) {
    if (r > 0 && before / mass_k >= f.top_p) break;
    expect[order[r]] = p[order[r]];
    kept += p[order[r]];
    before += p[order[r]];
  }
  for (auto& x : expect) x /= kept;

  EngineOptions o;
  o.max_batch = 512;
  Engine e(m, nullptr, o);
  SamplingParams sp;
  sp.n = N;
  sp.max_new_tokens = 1;
  sp.temperature = f.temperature;
  sp.top_k = f.top_k;
  sp.top_p = f.top_p;
  sp.seed = 2024;
  auto cs = e.generate({{0, prompt, sp}});
  ASSERT_EQ((int64_t)cs.size(), N);
  EXPECT_EQ(e.stats().prefill_calls, 1);  // one prefill for all 20000 samples
  std::vector<int64_t> count(V, 0);
  for (const auto& c : cs) count[c.token_ids[0]]++;
  for (int64_t i = 0; i < V; ++i)
    if (expect[i] == 0) ASSERT_EQ(count[i], 0) << "token " << i << " is filtered out but was sampled";
  int bins = 0;
  const double pvalue = chi_square_pvalue(std::vector<double>(count.begin(), count.end()), expect, &bins);
  ASSERT_GE(bins, 5);
  std::cout << "T=" << f.temperature << " top_k=" << f.top_k << " top_p=" << f.top_p << ": chi-square over " << bins
            << " bins, p = " << pvalue << "\n";
  EXPECT_GT(pvalue, 1e-3);
}
INSTANTIATE_TEST_SUITE_P(Filters, EngineSampling,
                         ::testing::Values(Filter{1.0, 0, 1.0}, Filter{0.7, 0, 1.0}, Filter{1.5, 20, 1.0},
                                           Filter{1.0, 0, 0.8}, Filter{0.9, 40, 0.9}));

TEST(Sampling, ChiSquareRejectsAWrongTemperature) {
  // The statistic above must be able to fail: samples at T = 1 tested against T = 0.7.
  auto m = tiny(kTinyV2, 2.5);
  std::vector<int64_t> prompt = {5, 17, 99, 250, 3};
  Tensor z = full_logits(*m, prompt)[prompt.size() - 1];
  Tensor rows = z.unsqueeze(0).expand({20000, z.size(0)}).contiguous();
  std::vector<float> t(20000, 1.0f), tp(20000, 1.0f), u(20000);
  std::vector<int64_t> tk(20000, 0);
  for (int i = 0; i < 20000; ++i) u[i] = sample_uniform(1, 0, i, 0);
  Tensor tok = sample_tokens(rows, t, tk, tp, u).first;
  Tensor expect = (z.to(at::kDouble) / 0.7).softmax(-1) * 20000;
  Tensor counts = at::bincount(tok, {}, z.size(0)).to(at::kDouble);
  Tensor keep = expect >= 5;
  double chi2 = ((counts - expect).pow(2) / expect).masked_select(keep).sum().item<double>();
  EXPECT_LT(gamma_q((keep.sum().item<double>() - 1) / 2, chi2 / 2), 1e-6);
}

// Ten prompts with G = 3 through 5 slots and a small cache (sequences wait, finish and hand their
// slot on) give exactly what each prompt gives alone, one sample at a time.
TEST(Engine, SharedPrefillAndContinuousBatchingEqualOneAtATime) {
  auto m = tiny(kTinyV3);
  SamplingParams sp;
  sp.n = 3;
  sp.max_new_tokens = 25;
  sp.top_p = 0.9;
  sp.temperature = 0.8;
  sp.stop_token_ids = {7, 11, 13};  // uneven lengths
  sp.seed = 99;
  auto ps = prompts(10, 1, 40, 97, 21);
  auto rs = requests(ps, sp);
  EngineOptions small;
  small.max_batch = 5;
  small.block_size = 4;
  small.kv_cache_bytes = 40 * (3 * 4 * 20 * 4);  // 40 blocks (3 layers x 4 tokens x 20 values x fp32): ~one prompt at a time
  Engine batched(m, nullptr, small);
  auto cs = batched.generate(rs);
  int64_t total_prompt = 0;
  for (auto& p : ps) total_prompt += p.size();
  EXPECT_EQ(batched.stats().prefill_tokens, total_prompt);  // each prompt prefilled once
  EXPECT_EQ(batched.blocks_in_use(), 0);
  int64_t lengths = 0;
  for (const auto& c : cs) lengths += c.token_ids.size();
  EXPECT_GT(batched.stats().decode_tokens, 0);
  EXPECT_LE(batched.stats().decode_tokens, lengths);
  EXPECT_LE(batched.stats().decode_tokens, 5 * batched.stats().decode_steps);  // never more than 5 at once

  EngineOptions one;
  one.max_batch = 1;
  std::vector<Completion> alone;
  for (const auto& r : rs) {
    Engine e(m, nullptr, one);
    for (auto& c : e.generate({r})) alone.push_back(c);
  }
  ASSERT_EQ(cs.size(), alone.size());
  // fp32 sums in another batch shape round differently, so a sample whose draw falls within
  // rounding of a nucleus or sampling boundary may take another token there (bit-exact batch
  // invariance is a separate, opt-in mode). Every sample agrees up to its first differing token,
  // with equal log-probs, and at most one sample of the ten differs at all.
  std::set<size_t> lens;
  int diverged = 0;
  for (size_t i = 0; i < cs.size(); ++i) {
    EXPECT_EQ(cs[i].prompt_index, alone[i].prompt_index);
    EXPECT_EQ(cs[i].sample_index, alone[i].sample_index);
    size_t same = 0;
    while (same < cs[i].token_ids.size() && same < alone[i].token_ids.size() &&
           cs[i].token_ids[same] == alone[i].token_ids[same])
      ++same;
    if (cs[i].token_ids != alone[i].token_ids) ++diverged;
    else EXPECT_EQ(cs[i].finish_reason, alone[i].finish_reason);
    for (size_t j = 0; j < same; ++j) EXPECT_NEAR(cs[i].logprobs[j], alone[i].logprobs[j], 1e-5);
    lens.insert(cs[i].token_ids.size());
  }
  EXPECT_LE(diverged, 1) << "samples whose tokens differ between batched and one-at-a-time decoding";
  EXPECT_GT(lens.size(), 3u);  // stop tokens made lengths differ
  expect_logprobs_match_recompute(*m, rs, cs);
}

TEST(Engine, SeedDeterminesSamples) {
  auto m = tiny(kTinyV3);
  SamplingParams sp;
  sp.n = 4;
  sp.max_new_tokens = 12;
  sp.seed = 5;
  auto rs = requests(prompts(3, 5, 10, 97, 2), sp);
  Engine e(m, nullptr, {});
  auto a = e.generate(rs), b = e.generate(rs);
  for (auto& r : rs) r.params.seed = 6;
  auto c = e.generate(rs);
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].token_ids, b[i].token_ids);
    differ += a[i].token_ids != c[i].token_ids;
  }
  EXPECT_GT(differ, (int)a.size() / 2);
  // Samples of one prompt differ from each other.
  EXPECT_NE(a[0].token_ids, a[1].token_ids);
}

TEST(Engine, StopTokensAndLengthFinishReasons) {
  auto m = tiny(kTinyV3);
  SamplingParams sp;
  sp.n = 8;
  sp.max_new_tokens = 40;
  sp.stop_token_ids = {1, 2, 3, 4, 5};
  auto cs = Engine(m, nullptr, {}).generate(requests(prompts(4, 2, 9, 97, 3), sp));
  int stops = 0, lengths = 0;
  for (const auto& c : cs) {
    if (c.finish_reason == FinishReason::Stop) {
      ++stops;
      auto is_stop = [](int64_t t) { return t >= 1 && t <= 5; };
      EXPECT_TRUE(is_stop(c.token_ids.back()));  // the stop token is kept
      for (size_t j = 0; j + 1 < c.token_ids.size(); ++j) EXPECT_FALSE(is_stop(c.token_ids[j]));
    } else {
      ++lengths;
      EXPECT_EQ(c.token_ids.size(), 40u);
    }
  }
  EXPECT_GT(stops, 0);
  EXPECT_GT(lengths, 0);
}

TEST(Engine, StopStringEndsTheCompletionAtItsFirstOccurrence) {
  auto m = tiny(kTinyV2, 3);
  auto tok = text::Tokenizer::from_json(grpo::testing::make_tokenizer(
                                            R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})",
                                            {{"a", "b"}, {"c", "d"}}),
                                        "bytes");
  SamplingParams sp;
  sp.max_new_tokens = 60;
  sp.seed = 3;
  Engine e(m, &tok, {});
  Request r{0, {72, 101, 108, 108, 111}, sp};
  auto full = e.generate({r})[0];
  ASSERT_EQ(full.text.size() > 10, true);
  // A two-byte string from the middle of the unstopped text: stopping on it must cut the same
  // completion right after the token that completes its first occurrence.
  size_t at = std::string::npos;
  auto ascii = [](char c) { return c > ' ' && c < 127; };
  for (size_t i = full.text.size() / 2; i + 1 < full.text.size() && at == std::string::npos; ++i)
    if (ascii(full.text[i]) && ascii(full.text[i + 1])) at = i;
  ASSERT_NE(at, std::string::npos) << "no printable pair in the second half of: " << full.text;
  std::string stop = full.text.substr(at, 2);
  size_t first = full.text.find(stop);
  r.params.stop_strings = {stop};
  auto cut = e.generate({r})[0];
  EXPECT_EQ(cut.finish_reason, FinishReason::Stop);
  ASSERT_LE(cut.token_ids.size(), full.token_ids.size());
  EXPECT_TRUE(std::equal(cut.token_ids.begin(), cut.token_ids.end(), full.token_ids.begin()));
  EXPECT_EQ(cut.text.find(stop), first);
  std::vector<int32_t> shorter(cut.token_ids.begin(), cut.token_ids.end() - 1);
  EXPECT_EQ(tok.decode(shorter).find(stop), std::string::npos);  // not complete one token earlier
  EXPECT_EQ(cut.text, tok.decode(std::vector<int32_t>(cut.token_ids.begin(), cut.token_ids.end())));
}

TEST(Engine, BadRequestsAreErrorsThatNameTheRequest) {
  auto m = tiny(kTinyV3);
  Engine e(m, nullptr, {});
  auto expect_error = [&](Request r, const std::string& needle) {
    try {
      e.add(r, "prompt 7");
      FAIL() << "accepted a request with " << needle;
    } catch (const Error& err) {
      std::string msg = err.what();
      EXPECT_NE(msg.find("prompt 7"), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  SamplingParams sp;
  expect_error({0, {}, sp}, "empty prompt");
  expect_error({0, std::vector<int64_t>(256, 1), sp}, "does not fit the context");
  expect_error({0, {1, 500}, sp}, "outside the vocabulary");
  SamplingParams bad = sp;
  bad.n = 0;
  expect_error({0, {1, 2}, bad}, "n must be at least 1");
  bad = sp;
  bad.temperature = -0.5;
  expect_error({0, {1, 2}, bad}, "temperature");
  bad = sp;
  bad.top_p = 0;
  expect_error({0, {1, 2}, bad}, "top_p");
  bad = sp;
  bad.stop_strings = {"x"};
  expect_error({0, {1, 2}, bad}, "tokenizer");
  // Still serves after refusing.
  EXPECT_TRUE(e.idle());
  sp.max_new_tokens = 300;  // clamped to the context
  auto cs = e.generate({{0, std::vector<int64_t>(250, 1), sp}});
  EXPECT_EQ(cs[0].token_ids.size(), 6u);
  EXPECT_EQ(cs[0].finish_reason, FinishReason::Length);
}

// The rollout engine with FP8 weights (EngineOptions::fp8): log-probs stay near the policy's own
// (the bf16/fp32 training forward) by FP8 error only, the copies follow the weights when
// weight_version changes, and combinations it cannot honour are refused.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <iostream>

#include "common/engine_checks.h"
#include "common/tiny_models.h"
#include "model/deepseek.h"
#include "model/fp8.h"
#include "rollout/engine.h"

using namespace grpo;
using namespace grpo::rollout;
using at::Tensor;
using grpo::testing::logprob_gap;
using grpo::testing::prompts;
using grpo::testing::requests;

namespace {

std::shared_ptr<model::CausalLM> fp8_model() {
  // Widths of 16 and more, so that most layers take an FP8 copy (model/fp8.h).
  return grpo::testing::tiny(grpo::testing::with_paged_mla_widths(grpo::testing::kTinyV3), 3);
}

model::MLAImpl& attention(model::CausalLM& m, int64_t layer) {
  return *m.model->layers[layer]->as<model::DecoderLayer>()->self_attn->as<model::MLAImpl>();
}

// Two samples per prompt of `count` random prompts; an engine with small blocks and `cache_mb`.
struct Setup {
  std::vector<Request> requests;
  EngineOptions options;
};
Setup setup(int count, int min_len, int max_len, int64_t max_new, uint64_t seed, int64_t cache_mb) {
  SamplingParams sp;
  sp.n = 2;
  sp.max_new_tokens = max_new;
  sp.seed = seed;
  Setup s{requests(prompts(count, min_len, max_len, 97, (uint32_t)seed + 1), sp), {}};
  s.options.block_size = 8;
  s.options.kv_cache_bytes = cache_mb << 20;
  return s;
}

}  // namespace

TEST(Fp8Rollout, LogprobsDriftByFp8ErrorAndFollowTheWeights) {
  auto m = fp8_model();
  auto [rs, o] = setup(4, 3, 30, 24, 11, 16);
  auto [plain_worst, plain_mean] = logprob_gap(*m, rs, Engine(m, nullptr, o).generate(rs));
  o.fp8 = true;
  Engine e(m, nullptr, o);
  EXPECT_GT(e.stats().fp8_bytes, 0);
  auto [worst, mean] = logprob_gap(*m, rs, e.generate(rs));
  std::cout << "|engine - recompute| mean / max: fp8 " << mean << " / " << worst << ", fp32 " << plain_mean << " / "
            << plain_worst << "\n";
  EXPECT_LT(plain_mean, 1e-5);
  EXPECT_GT(mean, 10 * plain_mean);  // the FP8 copies were used
  EXPECT_LT(mean, 0.05);

  // An update: with weight_version bumped, the next step requantizes from the new weights.
  {
    at::NoGradGuard g;
    for (int64_t l = 0; l < 3; ++l) attention(*m, l).o_proj->weight.mul_(-2.0);
  }
  e.weight_version = 1;
  auto [worst2, mean2] = logprob_gap(*m, rs, e.generate(rs));
  std::cout << "after an update: fp8 mean / max " << mean2 << " / " << worst2 << "\n";
  EXPECT_LT(mean2, 0.05);
  model::fp8::Weight fresh;
  model::fp8::quantize_weight(attention(*m, 2).o_proj->weight, fresh);
  EXPECT_TRUE(at::equal(attention(*m, 2).o_proj->fp8.q.view(at::kByte), fresh.q.view(at::kByte)));
  EXPECT_EQ(e.stats().fp8_quantizations, 3);  // construction, first step, after the update
  // Training outside the engine never sees the copies.
  EXPECT_FALSE(model::fp8::active());
}

TEST(Fp8Rollout, RefusesTheBatchInvariantForward) {
  auto m = fp8_model();
  m->batch_invariant = true;
  EngineOptions o;
  o.fp8 = true;
  o.kv_cache_bytes = 4 << 20;
  EXPECT_THROW(Engine(m, nullptr, o), std::exception);
}

TEST(Fp8RolloutCuda, Bf16LogprobsNearRecomputeWithGraphs) {
  if (!at::hasCUDA() || !model::fp8::native(at::Device(at::kCUDA, 0)))
    GTEST_SKIP() << "needs a Hopper GPU (runs on the GPU machine)";
  auto m = fp8_model();
  m->to_device_dtype(at::kCUDA, at::kBFloat16);
  auto [rs, o] = setup(6, 20, 150, 50, 5, 64);
  auto [plain_worst, plain_mean] = logprob_gap(*m, rs, Engine(m, nullptr, o).generate(rs));
  o.fp8 = true;
  Engine e(m, nullptr, o);
  auto [worst, mean] = logprob_gap(*m, rs, e.generate(rs));
  std::cout << "|engine - recompute| mean / max: fp8 " << mean << " / " << worst << ", bf16 " << plain_mean << " / "
            << plain_worst << "\n";
  EXPECT_GT(mean, plain_mean);
  EXPECT_LT(mean, 0.05);
}

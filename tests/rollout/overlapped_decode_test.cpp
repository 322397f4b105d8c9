// Overlapped decode steps (EngineOptions::overlap_steps) against the synchronous loop on CUDA, in
// bf16 with CUDA graphs: each step queued before the host has seen the previous step's tokens.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/engine_checks.h"
#include "common/tiny_models.h"
#include "rollout/engine.h"

using namespace grpo;
using namespace grpo::rollout;
using grpo::testing::kTinyV3;
using grpo::testing::prompts;
using grpo::testing::requests;
using grpo::testing::tiny;
using grpo::testing::with_paged_mla_widths;

namespace {

struct Generated {
  std::vector<Completion> out;
  EngineStats stats;
};

Generated generate(const std::shared_ptr<model::CausalLM>& m, const std::vector<Request>& rs, bool overlap, int64_t max_batch) {
  EngineOptions o;
  o.block_size = 8;
  o.kv_cache_bytes = 64 << 20;
  o.max_batch = max_batch;
  o.overlap_steps = overlap;
  Engine e(m, nullptr, o);
  Generated r;
  r.out = e.generate(rs);
  r.stats = e.stats();
  return r;
}

void expect_same(const Generated& synchronous, const Generated& overlapped, const std::string& what) {
  ASSERT_EQ(synchronous.out.size(), overlapped.out.size()) << what;
  for (size_t i = 0; i < synchronous.out.size(); ++i) {
    const Completion &a = synchronous.out[i], &b = overlapped.out[i];
    EXPECT_EQ(a.token_ids, b.token_ids) << what << ", completion " << i;
    EXPECT_EQ(a.logprobs, b.logprobs) << what << ", completion " << i;  // to the bit
    EXPECT_EQ(a.finish_reason, b.finish_reason) << what << ", completion " << i;
  }
}

// Every sequence ends by length at its own step (max_new_tokens differs a request) and every
// request fits the batch: the overlapped engine runs the same batches as the synchronous one, so
// its tokens and log-probs are the same to the bit, and its tokens are all counted.
TEST(OverlappedDecodeCuda, SameBatchesGiveTheSynchronousTokensToTheBit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (const std::string& cfg : {std::string(kTinyV3), with_paged_mla_widths(kTinyV3)}) {
    SCOPED_TRACE(cfg);
    auto m = tiny(cfg, 3);
    m->to_device_dtype(at::kCUDA, at::kBFloat16);
    std::vector<Request> rs;
    const auto ps = prompts(9, 1, 70, 97, 8);
    for (size_t i = 0; i < ps.size(); ++i) {
      SamplingParams sp;
      sp.n = 3;
      sp.seed = 21;
      sp.max_new_tokens = 10 + 7 * (int64_t)i;  // lengths end at different steps
      rs.push_back(requests({ps[i]}, sp)[0]);
      rs.back().prompt_index = (int64_t)i;
    }
    const Generated synchronous = generate(m, rs, false, 64), overlapped = generate(m, rs, true, 64);
    expect_same(synchronous, overlapped, "ordinary forward");
    int64_t tokens = 0;
    for (const auto& c : overlapped.out) tokens += (int64_t)c.token_ids.size() - 1;  // the first comes from prefill
    EXPECT_EQ(overlapped.stats.decode_tokens, tokens);
    EXPECT_EQ(overlapped.stats.decode_steps, synchronous.stats.decode_steps) << "no step past the last token";
  }
}

// Stop tokens end sequences the overlapped engine has already queued a step for (that row is
// dropped), and more samples than slots make it admit prompts a step later than the synchronous
// loop: other batches. With the batch-invariant forward (exact_rollout) a row does not depend on
// its batch, so tokens and log-probs are still the synchronous loop's to the bit.
TEST(OverlappedDecodeCuda, StopTokensAndAdmissionsKeepTheExactModesBits) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  auto m = tiny(with_paged_mla_widths(kTinyV3), 3);
  m->to_device_dtype(at::kCUDA, at::kBFloat16);
  m->batch_invariant = true;
  SamplingParams sp;
  sp.n = 4;
  sp.seed = 3;
  sp.max_new_tokens = 40;
  sp.stop_token_ids = {7, 11, 13, 17};  // uneven lengths, ends the host learns of a step late
  auto rs = requests(prompts(10, 1, 60, 97, 6), sp);
  const Generated synchronous = generate(m, rs, false, 16), overlapped = generate(m, rs, true, 16);
  expect_same(synchronous, overlapped, "exact_rollout, 40 samples through 16 slots");
  int64_t stopped = 0;
  for (const auto& c : synchronous.out) stopped += c.finish_reason == FinishReason::Stop;
  EXPECT_GT(stopped, 4) << "the check must see sequences end by a stop token";
  m->batch_invariant = false;
}

}  // namespace

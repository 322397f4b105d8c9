// The batch-invariant mode (exact_rollout): the rollout engine's bf16 log-probs equal the training
// forward's bit for bit, whatever the batch the engine decoded them in, for MLA + MoE (DeepSeek-V3
// style), grouped-query attention + MoE (Qwen3-MoE) and a dense Qwen2 with biases, with LoRA
// adapters too; and the training forward's gradient is the ordinary forward's.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>
#include <random>

#include "common/tiny_models.h"
#include "model/batch_invariant.h"
#include "model/checkpoint.h"
#include "model/kernel_trial.h"
#include "model/lora.h"
#include "rollout/engine.h"

using namespace grpo;
using at::Tensor;

namespace {

const char* kTinyV3 = R"({
  "model_type": "deepseek_v3", "vocab_size": 61, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "max_position_embeddings": 128, "num_nextn_predict_layers": 0})";

// Latent rank 64 and rows of 80: on CUDA the absorbed attention runs the tensor-core paged MLA
// kernel (its keys split every 256), which the rank-16 model above does not qualify for.
const char* kTinyV3Rank64 = R"({
  "model_type": "deepseek_v3", "vocab_size": 61, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 24, "kv_lora_rank": 64, "qk_nope_head_dim": 8, "qk_rope_head_dim": 16, "v_head_dim": 8,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "max_position_embeddings": 1024, "num_nextn_predict_layers": 0})";

const char* kTinyQwen3Moe = R"({
  "model_type": "qwen3_moe", "vocab_size": 61, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "head_dim": 8, "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": true,
  "max_position_embeddings": 128})";

const char* kTinyQwen2 = R"({
  "model_type": "qwen2", "vocab_size": 61, "hidden_size": 32, "intermediate_size": 48,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128})";

std::shared_ptr<model::CausalLM> tiny(const char* config, bool lora = false, at::Device device = at::kCPU) {
  auto m = std::make_shared<model::CausalLM>(parse_model_config(config, "tiny"));
  model::init_weights(*m, 5);
  at::NoGradGuard g;
  for (auto& p : m->parameters())
    if (p.dim() > 1) p.mul_(8);  // far from uniform: routing and attention matter
  if (lora) {
    model::LoraConfig lc;
    lc.r = 4;
    model::add_lora(*m, lc, 3);
    for (auto& item : m->named_parameters())
      if (item.key().find("lora_B") != std::string::npos) item.value().normal_(0, 0.05);  // adapters that change the output
  }
  m->to_device_dtype(device, at::kBFloat16);
  return m;
}

// Prompts of min_len to min_len + 16 tokens.
std::vector<rollout::Request> requests(int count, int first_index, uint32_t seed, int min_len = 3) {
  std::mt19937 rng(seed);
  std::vector<rollout::Request> reqs;
  for (int i = 0; i < count; ++i) {
    rollout::Request q;
    q.prompt_index = first_index + i;
    for (int t = 0, n = min_len + (int)(rng() % 17); t < n; ++t) q.prompt_ids.push_back(rng() % 61);
    q.params.n = 3;
    q.params.max_new_tokens = 12 + i;
    q.params.seed = 7;
    reqs.push_back(q);
  }
  return reqs;
}

struct Samples {
  std::vector<std::vector<int64_t>> prompts, completions;
  std::vector<std::vector<float>> logprobs;
};

Samples generate(const std::shared_ptr<model::CausalLM>& m, const std::vector<rollout::Request>& reqs, int64_t max_batch,
                 int64_t block_size) {
  rollout::EngineOptions eo;
  eo.max_batch = max_batch;
  eo.block_size = block_size;
  rollout::Engine engine(m, nullptr, eo);
  Samples s;
  for (auto& c : engine.generate(reqs)) {
    for (auto& r : reqs)
      if (r.prompt_index == c.prompt_index) s.prompts.push_back(r.prompt_ids);
    s.completions.push_back(c.token_ids);
    s.logprobs.push_back(c.logprobs);
  }
  return s;
}

// max over tokens of |engine log-prob - training forward log-prob| (and the mean, if asked).
double max_diff(model::CausalLM& m, const Samples& s, double* mean = nullptr) {
  auto lp = m.completion_logprobs(s.prompts, s.completions);
  double worst = 0, sum = 0;
  int64_t n = 0;
  for (size_t i = 0; i < lp.size(); ++i) {
    EXPECT_EQ(lp[i].numel(), (int64_t)s.logprobs[i].size());
    Tensor host = lp[i].to(at::kCPU);
    auto a = host.accessor<float, 1>();
    for (int64_t j = 0; j < lp[i].numel(); ++j, ++n) {
      const double d = std::abs((double)a[j] - s.logprobs[i][j]);
      worst = std::max(worst, d);
      sum += d;
    }
  }
  if (mean) *mean = sum / std::max<int64_t>(n, 1);
  return worst;
}

void expect_exact(const char* config, bool lora, at::Device device = at::kCPU, int min_prompt = 3) {
  auto m = tiny(config, lora, device);
  auto reqs = requests(6, 0, 11, min_prompt);
  m->batch_invariant = false;
  double fast_mean = 0;
  const double fast = max_diff(*m, generate(m, reqs, 64, 16), &fast_mean);
  m->batch_invariant = true;
  Samples s = generate(m, reqs, 64, 16);
  EXPECT_EQ(max_diff(*m, s), 0.0) << "batch-invariant mode";
  EXPECT_GT(fast, 1e-4) << "the ordinary bf16 forwards differ, so equality above means something";
  // ... and the values are the model's: the ordinary forward's to bf16 rounding, about as close as
  // the ordinary engine's are, or within 0.05 nats a token on average where those are closer still
  // (a slip common to both batch-invariant paths would not be: RoPE's pairs flipped gives 0.4).
  m->batch_invariant = false;
  double exact_mean = 0;
  const double from_ordinary = max_diff(*m, s, &exact_mean);
  m->batch_invariant = true;
  EXPECT_LT(exact_mean, std::max(3 * fast_mean, 0.05)) << "the batch-invariant forward strays from the ordinary one";
  printf("[ bf16     ] |log-prob diff| against the ordinary forward, mean / max: ordinary engine %.4f / %.4f, "
         "exact engine %.4f / %.4f\n", fast_mean, fast, exact_mean, from_ordinary);
  {  // with grad mode on (the update's forward), the values are the same
    at::AutoGradMode on(true);
    auto lp = m->completion_logprobs(s.prompts, s.completions);
    for (size_t i = 0; i < lp.size(); ++i)
      for (int64_t j = 0; j < lp[i].numel(); ++j) ASSERT_EQ(lp[i][j].item<float>(), s.logprobs[i][j]);
  }
}

}  // namespace

TEST(ExactRollout, MlaMoeEngineEqualsTrainingBitForBit) { expect_exact(kTinyV3, false); }
TEST(ExactRollout, GqaMoeEngineEqualsTrainingBitForBit) { expect_exact(kTinyQwen3Moe, false); }
TEST(ExactRollout, DenseWithBiasesAndLoraEqualsTrainingBitForBit) { expect_exact(kTinyQwen2, true); }
TEST(ExactRollout, MlaMoeWithLoraEqualsTrainingBitForBit) { expect_exact(kTinyV3, true); }

// The same request gives the same tokens and log-probs alone, among others, decoded one sequence
// at a time, and with another block size.
void expect_batch_invariance(at::Device device, const char* config = kTinyV3, int min_prompt = 3) {
  auto m = tiny(config, false, device);
  m->batch_invariant = true;
  auto mine = requests(1, 100, 5, min_prompt);
  auto crowd = requests(7, 0, 9, min_prompt);
  crowd.insert(crowd.begin() + 3, mine[0]);
  Samples alone = generate(m, mine, 64, 16), together = generate(m, crowd, 64, 16), serial = generate(m, crowd, 1, 4);
  auto find = [&](const Samples& s, size_t sample) {
    size_t seen = 0;
    for (size_t i = 0; i < s.prompts.size(); ++i)
      if (s.prompts[i] == mine[0].prompt_ids && seen++ == sample) return i;
    ADD_FAILURE() << "sample missing";
    return size_t(0);
  };
  for (size_t k = 0; k < 3; ++k) {
    size_t a = find(alone, k), b = find(together, k), c = find(serial, k);
    EXPECT_EQ(alone.completions[a], together.completions[b]);
    EXPECT_EQ(alone.logprobs[a], together.logprobs[b]);
    EXPECT_EQ(alone.completions[a], serial.completions[c]);
    EXPECT_EQ(alone.logprobs[a], serial.logprobs[c]);
  }
}

TEST(ExactRollout, BatchCompositionChangesNothing) { expect_batch_invariance(at::kCPU); }

// Speculative decoding: the MTP module drafts (one, then three a step), the batch-invariant forward
// checks the last token and the drafts in one call, each draft reading the rows written beside it.
// The log-probs of every kept token, draft or not, still equal training's to the bit.
void expect_speculative_exact(const char* base, at::Device device) {
  const std::string config = grpo::testing::with_mtp_modules(base, 1);
  auto m = tiny(config.c_str(), false, device);
  m->batch_invariant = true;
  auto reqs = requests(6, 0, 11);
  for (int64_t block_size : {4, 16}) {  // one draft a step, then three
    rollout::EngineOptions eo;
    eo.max_batch = block_size == 4 ? 64 : 5;
    eo.block_size = block_size;
    eo.speculative_mtp = true;
    eo.num_speculative_tokens = block_size == 4 ? 1 : 3;
    rollout::Engine engine(m, nullptr, eo);
    Samples s;
    for (auto& c : engine.generate(reqs)) {
      s.prompts.push_back(reqs[c.prompt_index].prompt_ids);
      s.completions.push_back(c.token_ids);
      s.logprobs.push_back(c.logprobs);
    }
    const auto& st = engine.stats();
    EXPECT_EQ(max_diff(*m, s), 0.0) << "block size " << block_size;
    EXPECT_GT(st.accepted_drafts, 0);
    EXPECT_LT(st.accepted_drafts, st.draft_tokens);
    EXPECT_GT(st.decode_tokens, st.decode_steps);  // kept drafts: more tokens than steps
  }
}

TEST(ExactRollout, SpeculativeDecodingKeepsTheLogprobsExact) { expect_speculative_exact(kTinyV3, at::kCPU); }

// The values come from the batch-invariant forward, the gradient from the ordinary one: for a
// dense model the gradient equals the ordinary forward's exactly, and for MoE the ordinary
// forward routes as the batch-invariant one did.
TEST(ExactRollout, GradientIsTheOrdinaryForwards) {
  for (const char* config : {kTinyQwen2, kTinyV3}) {
    auto m = tiny(config);
    for (auto& p : m->parameters()) p.set_requires_grad(p.is_floating_point());
    std::vector<std::vector<int64_t>> prompts = {{1, 2, 3, 4}, {5, 6}}, completions = {{7, 8, 9}, {10, 11, 12, 13}};
    auto grads = [&](bool invariant) {
      m->batch_invariant = invariant;
      m->zero_grad();
      at::AutoGradMode on(true);
      auto lp = m->completion_logprobs(prompts, completions);
      (lp[0].sum() + lp[1].sum() * 2).backward();
      std::vector<Tensor> g;
      for (auto& p : m->parameters())
        if (p.grad().defined()) g.push_back(p.grad().clone());
      return g;
    };
    auto plain = grads(false), mixed = grads(true);
    ASSERT_EQ(plain.size(), mixed.size());
    double total = 0;
    for (size_t i = 0; i < plain.size(); ++i) {
      total += mixed[i].to(at::kFloat).abs().sum().item<double>();
      if (std::string(config) == kTinyQwen2) {
        EXPECT_TRUE(at::equal(plain[i], mixed[i])) << "parameter " << i;
      }
    }
    EXPECT_GT(total, 0);
  }
  // MoE: the experts the gradient's forward used are the batch-invariant forward's.
  auto m = tiny(kTinyV3);
  m->batch_invariant = true;
  std::vector<std::vector<int64_t>> prompts = {{1, 2, 3, 4, 5, 6, 7}}, completions = {{8, 9, 10}};
  auto values = model::invariant::completion_logprobs(*m, prompts, completions);
  model::CausalLM::CompletionOptions o;
  o.routing = true;
  auto out = m->completion_forward(prompts, completions, o);
  ASSERT_EQ(out.routing.size(), values.experts.size());
  for (size_t l = 0; l < values.experts.size(); ++l)
    EXPECT_TRUE(at::equal(out.routing[l].experts, values.experts[l])) << "MoE layer " << l;  // one unpadded sequence
}

// The training values' log-probabilities formed a few rows at a time (a long mini-batch's logits
// would not fit at once), chunks ending inside a sequence: the same bits as all at once.
TEST(ExactRollout, LogprobsFormedInChunksAreTheSameBits) {
  auto m = tiny(kTinyV3);
  m->batch_invariant = true;
  const std::vector<std::vector<int64_t>> prompts = {{1, 2, 3}, {4, 5, 6, 7, 8}}, completions = {{9, 10, 11, 12, 13}, {14, 15}};
  const Tensor whole = model::invariant::completion_logprobs(*m, prompts, completions).logprobs;
  ASSERT_EQ(whole.numel(), 7);
  for (int64_t rows : {1, 3, 7})
    EXPECT_TRUE(at::equal(model::invariant::completion_logprobs(*m, prompts, completions, rows).logprobs, whole)) << rows;
}

// The same on CUDA, through the tensor-core kernels of invariant_kernels_cuda.cu.
TEST(ExactRolloutCuda, EngineEqualsTrainingBitForBit) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  expect_exact(kTinyV3, false, at::Device(at::kCUDA, 0));
  expect_exact(kTinyQwen3Moe, false, at::Device(at::kCUDA, 0));
  expect_exact(kTinyQwen2, true, at::Device(at::kCUDA, 0));
  expect_exact(kTinyV3, true, at::Device(at::kCUDA, 0));
}

TEST(ExactRolloutCuda, BatchCompositionChangesNothing) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  expect_batch_invariance(at::Device(at::kCUDA, 0));
}

// Through CUDA graphs: the check's rows (2 and 4 per sequence) in graph buckets, the MTP module's own graphs.
TEST(ExactRolloutCuda, SpeculativeDecodingKeepsTheLogprobsExact) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  expect_speculative_exact(kTinyV3, at::Device(at::kCUDA, 0));
  expect_speculative_exact(kTinyV3Rank64, at::Device(at::kCUDA, 0));
}

// The paged MLA kernel's form: prompts of 3-19 tokens, and of 250-266, whose keys cross the
// kernel's split at 256 while decoding, among rows of other lengths (the CUDA graphs' padded
// block tables hold more splits than a row needs).
TEST(ExactRolloutCuda, TensorCoreMlaEqualsTrainingBitForBit) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  expect_exact(kTinyV3Rank64, false, at::Device(at::kCUDA, 0));
  expect_exact(kTinyV3Rank64, true, at::Device(at::kCUDA, 0), 250);
  expect_batch_invariance(at::Device(at::kCUDA, 0), kTinyV3Rank64, 250);
}

// With the exact mode's kernel on trial (GRPO_KERNEL_TRIAL=tall_tiles,-staged_tiles: the decode
// steps' grouped products in tiles of 32 rows for the per-head products, read from global memory),
// and with its adopted decode kernels turned off (-staged_tiles,-narrow_columns: the 16-row tiles
// and 32-column blocks they replaced). The prefill of six prompts of 250-266 tokens and the
// training forward over whole sequences take the 128 x 128 tiled kernel and the attention four
// query rows a block, as by default. The engine's log-probs still equal training's bit for bit,
// alone or in a crowd.
TEST(ExactRolloutCuda, KernelsOnTrialKeepTheEngineExact) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const char* kernels : {"tall_tiles,-staged_tiles", "-staged_tiles,-narrow_columns"}) {
    SCOPED_TRACE(kernels);
    model::KernelTrialScope trial(kernels);
    expect_exact(kTinyV3Rank64, false, at::Device(at::kCUDA, 0), 250);
    expect_exact(kTinyV3Rank64, true, at::Device(at::kCUDA, 0), 250);
    expect_batch_invariance(at::Device(at::kCUDA, 0), kTinyV3Rank64, 250);
  }
}

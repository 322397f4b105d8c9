// Routing replay: the engine records the experts that served every token it read, and a training
// forward that imposes them computes what the rollout computed even when its own router would now
// choose otherwise (here: the balancing bias moved between rollout and training).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <random>

#include "common/tiny_models.h"
#include "model/checkpoint.h"
#include "rollout/engine.h"
#include "util/error.h"

using namespace grpo;
using at::Tensor;

namespace {

// DeepSeek-V3 style: sigmoid scores, noaux_tc selection with groups (the bias moves the choice, not
// the weights), a dense first layer, so 2 MoE layers of 3.
const char* kTinyV3 = R"({
  "model_type": "deepseek_v3", "vocab_size": 61, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "max_position_embeddings": 128, "num_nextn_predict_layers": 0})";
constexpr int64_t kMoeLayers = 2, kTopK = 3;

struct Rollout {
  std::shared_ptr<model::CausalLM> model;
  std::vector<std::vector<int64_t>> prompts, completions;
  std::vector<std::vector<float>> logprobs;
  std::vector<std::vector<int16_t>> records;
};

// With `speculative`, the model has an MTP module that drafts (EngineOptions::speculative_mtp), and
// a stop token ends some samples, at a kept draft among others.
Rollout sample(bool speculative = false) {
  Rollout r;
  const std::string config = speculative ? grpo::testing::with_mtp_modules(kTinyV3, 1) : kTinyV3;
  r.model = std::make_shared<model::CausalLM>(parse_model_config(config, "tiny"));
  model::init_weights(*r.model, 5);
  {
    at::NoGradGuard g;
    for (auto& p : r.model->parameters())
      if (p.dim() > 1) p.mul_(8);  // far from uniform: routing matters
  }
  rollout::EngineOptions eo;
  eo.record_routing = true;
  if (speculative) {
    eo.speculative_mtp = true;
    eo.num_speculative_tokens = 2;
    eo.block_size = 4;
  }
  rollout::Engine engine(r.model, nullptr, eo);
  std::mt19937 rng(11);
  std::vector<rollout::Request> reqs;
  for (int i = 0; i < 5; ++i) {
    rollout::Request q;
    q.prompt_index = i;
    for (int t = 0, n = 3 + i * 4; t < n; ++t) q.prompt_ids.push_back(rng() % 61);  // 3..19 tokens
    q.params.n = 3;
    q.params.max_new_tokens = 10 + i;
    q.params.seed = 7;
    if (speculative) {
      q.params.n = 6;
      q.params.max_new_tokens = 24;
      q.params.stop_token_ids = {5, 6, 7};
    }
    reqs.push_back(q);
  }
  for (auto& c : engine.generate(reqs)) {
    r.prompts.push_back(reqs[c.prompt_index].prompt_ids);
    r.completions.push_back(c.token_ids);
    r.logprobs.push_back(c.logprobs);
    r.records.push_back(c.routed_experts);
  }
  int64_t bytes = 0;
  for (auto& rec : r.records) bytes += (int64_t)(rec.size() * sizeof(int16_t));
  EXPECT_EQ(engine.stats().routing_bytes, bytes);
  if (speculative) {
    EXPECT_GT(engine.stats().accepted_drafts, 0);
    EXPECT_LT(engine.stats().accepted_drafts, engine.stats().draft_tokens);
  }
  return r;
}

model::CausalLM::CompletionOptions replaying(const Rollout& r) {
  model::CausalLM::CompletionOptions o;
  o.routing = true;
  for (auto& rec : r.records) o.replay_experts.push_back(&rec);
  return o;
}

// Share of (real token, MoE layer) whose expert sets in `a` and `b` (B*T, k) are equal.
double agreement(const std::vector<Tensor>& a, const std::vector<Tensor>& b, const Tensor& mask) {
  double same = 0, total = 0;
  for (size_t l = 0; l < a.size(); ++l) {
    Tensor eq = std::get<0>(a[l].sort(1)).eq(std::get<0>(b[l].sort(1))).all(1).to(at::kFloat);
    same += (eq * mask.reshape({-1})).sum().item<double>();
    total += mask.sum().item<double>();
  }
  return same / total;
}

double max_logprob_diff(const Rollout& r, const std::vector<Tensor>& lp) {
  double worst = 0;
  for (size_t i = 0; i < lp.size(); ++i)
    worst = std::max(worst, (lp[i] - at::tensor(r.logprobs[i], at::kFloat)).abs().max().item<double>());
  return worst;
}

std::vector<Tensor> experts_of(const std::vector<model::RouterImpl::Routing>& routing, bool own) {
  std::vector<Tensor> out;
  for (auto& x : routing) out.push_back(own ? x.own_experts : x.experts);
  return out;
}

void perturb_bias(model::CausalLM& m) {
  at::NoGradGuard g;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
  for (auto& kv : m.named_buffers())
    if (kv.key().find("e_score_correction_bias") != std::string::npos) kv.value().uniform_(0, 2, gen);
}

}  // namespace

TEST(RoutingReplay, RecordsCoverEveryTokenTheModelRead) {
  Rollout r = sample();
  for (size_t i = 0; i < r.records.size(); ++i) {
    const int64_t tokens = (int64_t)(r.prompts[i].size() + r.completions[i].size()) - 1;
    ASSERT_EQ((int64_t)r.records[i].size(), tokens * kMoeLayers * kTopK) << "sample " << i;
  }
  // The records are the training forward's own routing (the same weights): replaying them changes
  // nothing, and the own choice agrees (up to near-ties between batched and decode arithmetic).
  at::NoGradGuard g;
  auto own = r.model->completion_forward(r.prompts, r.completions, {false, true, {}});
  auto replayed = r.model->completion_forward(r.prompts, r.completions, replaying(r));
  EXPECT_GE(agreement(experts_of(replayed.routing, false), experts_of(own.routing, false), own.token_mask), 0.99);
  EXPECT_LT(max_logprob_diff(r, own.logprobs), 2e-5);
  EXPECT_LT(max_logprob_diff(r, replayed.logprobs), 2e-5);
}

TEST(RoutingReplay, ImposesTheRecordedExpertsWhenTheRouterWouldChooseOthers) {
  Rollout r = sample();
  perturb_bias(*r.model);  // selection moves, the gate's weights do not
  at::NoGradGuard g;
  auto own = r.model->completion_forward(r.prompts, r.completions, {false, true, {}});
  auto replayed = r.model->completion_forward(r.prompts, r.completions, replaying(r));
  // Without replay the perturbed router picks other experts for many tokens, and log-probs move.
  const double without = agreement(experts_of(own.routing, false), experts_of(replayed.routing, false), own.token_mask);
  EXPECT_LT(without, 0.8);
  EXPECT_GT(max_logprob_diff(r, own.logprobs), 1e-2);
  // With replay the forward used the recorded experts and reproduces the rollout's log-probs. It also
  // reports its router's own choice: in the first MoE layer (the same input) that of the plain
  // forward; overall, as far from the record as the perturbation makes it.
  auto first = [](const std::vector<Tensor>& v) { return std::vector<Tensor>{v[0]}; };
  EXPECT_DOUBLE_EQ(agreement(first(experts_of(replayed.routing, true)), first(experts_of(own.routing, false)), own.token_mask),
                   1.0);
  EXPECT_LT(agreement(experts_of(replayed.routing, false), experts_of(replayed.routing, true), own.token_mask), 0.8);
  EXPECT_LT(max_logprob_diff(r, replayed.logprobs), 2e-5);
}

// Speculative decoding (two drafts a step) reads three rows a step, the last token and the drafts:
// the records keep the rows of the tokens the sequence kept, never a rejected draft's nor one past
// the end, and replaying them reproduces the rollout's log-probs under a perturbed router.
TEST(RoutingReplay, SpeculativeDecodingRecordsTheTokensItKept) {
  Rollout r = sample(/*speculative=*/true);
  int stopped = 0;
  for (size_t i = 0; i < r.records.size(); ++i) {
    const int64_t tokens = (int64_t)(r.prompts[i].size() + r.completions[i].size()) - 1;
    ASSERT_EQ((int64_t)r.records[i].size(), tokens * kMoeLayers * kTopK) << "sample " << i;
    stopped += r.completions[i].size() < 24;
  }
  EXPECT_GT(stopped, 0);
  at::NoGradGuard g;
  auto before = r.model->completion_forward(r.prompts, r.completions, replaying(r));
  EXPECT_LT(max_logprob_diff(r, before.logprobs), 2e-5);
  perturb_bias(*r.model);
  auto own = r.model->completion_forward(r.prompts, r.completions, {false, true, {}});
  auto replayed = r.model->completion_forward(r.prompts, r.completions, replaying(r));
  EXPECT_GT(max_logprob_diff(r, own.logprobs), 1e-2);
  EXPECT_LT(max_logprob_diff(r, replayed.logprobs), 2e-5);
}

TEST(RoutingReplay, CheckpointedLayersReplayInTheirRecomputation) {
  Rollout r = sample();
  perturb_bias(*r.model);
  auto grads = [&](bool checkpointing) {
    r.model->gradient_checkpointing = checkpointing;
    r.model->zero_grad();
    auto out = r.model->completion_forward(r.prompts, r.completions, replaying(r));
    at::cat(out.logprobs).sum().backward();
    std::vector<Tensor> g;
    for (auto& p : r.model->parameters()) g.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
    return g;
  };
  auto plain = grads(false), checkpointed = grads(true);
  double worst = 0, scale = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    worst = std::max(worst, (plain[i] - checkpointed[i]).abs().max().item<double>());
    scale = std::max(scale, plain[i].abs().max().item<double>());
  }
  EXPECT_GT(scale, 0);
  EXPECT_LT(worst, 1e-5 * scale);  // a recomputation routed by the perturbed bias would differ by O(scale)
}

TEST(RoutingReplay, BadRecordsAreErrorsThatNameTheSequence) {
  Rollout r = sample();
  auto o = replaying(r);
  std::vector<int16_t> short_record(r.records[2].begin(), r.records[2].end() - 1);
  o.replay_experts[2] = &short_record;
  try {
    r.model->completion_forward(r.prompts, r.completions, o);
    FAIL() << "a short record was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 2"), std::string::npos) << e.what();
  }
  std::vector<int16_t> outside = r.records[1];
  outside[0] = 8;  // 8 experts: 0..7
  o = replaying(r);
  o.replay_experts[1] = &outside;
  EXPECT_THROW(r.model->completion_forward(r.prompts, r.completions, o), Error);
}

// On CUDA in bf16 the decode step runs as CUDA graphs, whose one static output carries the experts
// out with the logits. The records must be those of the right rows and layers: they agree with the
// training forward's own routing (bf16 near-ties aside), where misplaced columns would agree by chance only.
TEST(RoutingReplayCuda, GraphsCarryTheRecordsOut) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  auto m = std::make_shared<model::CausalLM>(parse_model_config(kTinyV3, "tiny"));
  model::init_weights(*m, 5);
  {
    at::NoGradGuard g;
    for (auto& p : m->parameters())
      if (p.dim() > 1) p.mul_(3);
  }
  m->to_device_dtype(at::kCUDA, at::kBFloat16);
  rollout::EngineOptions eo;
  eo.record_routing = true;
  eo.block_size = 8;
  eo.kv_cache_bytes = 64 << 20;
  rollout::Engine engine(m, nullptr, eo);
  std::mt19937 rng(3);
  std::vector<rollout::Request> reqs;
  for (int i = 0; i < 7; ++i) {  // 21 sequences: padded to a graph batch of 32
    rollout::Request q;
    q.prompt_index = i;
    for (int t = 0, n = 1 + (int)(rng() % 40); t < n; ++t) q.prompt_ids.push_back(rng() % 61);
    q.params.n = 3;
    q.params.max_new_tokens = 30;
    q.params.seed = 2;
    reqs.push_back(q);
  }
  Rollout r;
  for (auto& c : engine.generate(reqs)) {
    r.prompts.push_back(reqs[c.prompt_index].prompt_ids);
    r.completions.push_back(c.token_ids);
    r.records.push_back(c.routed_experts);
    const int64_t tokens = (int64_t)(r.prompts.back().size() + c.token_ids.size()) - 1;
    ASSERT_EQ((int64_t)c.routed_experts.size(), tokens * kMoeLayers * kTopK);
  }
  at::NoGradGuard g;
  auto own = m->completion_forward(r.prompts, r.completions, {false, true, {}});
  auto replayed = m->completion_forward(r.prompts, r.completions, replaying(r));
  const double agree = agreement(experts_of(replayed.routing, false), experts_of(own.routing, false), own.token_mask);
  EXPECT_GE(agree, 0.8) << "records and the training router agree on " << agree << " of (token, layer)";
}

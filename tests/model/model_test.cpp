// Model invariants that a wrong implementation would break: grouped experts equal a per-token
// loop, group-limited routing stays inside the chosen groups, padding does not change results,
// checkpoints round-trip, FP8 block scales dequantise. (parity_test.py compares with transformers.)
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/causal_lm.h"
#include "model/deepseek.h"
#include "model/kernel_trial.h"
#include "model/lora.h"
#include "model/token_logprobs.h"
#include "util/error.h"

using namespace grpo;
using namespace grpo::model;

namespace {

const char* kTinyV3 = R"({
  "model_type": "deepseek_v3", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "max_position_embeddings": 256, "num_nextn_predict_layers": 1,
  "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                   "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}})";

std::shared_ptr<CausalLM> tiny(uint64_t seed = 1) {
  auto m = std::make_shared<CausalLM>(parse_model_config(kTinyV3, "tiny"));
  init_weights(*m, seed);
  // Larger weights than the init's 0.02 so that routing and attention are far from uniform.
  at::NoGradGuard g;
  for (auto& p : m->parameters())
    if (p.dim() > 1) p.mul_(10);
  for (auto& kv : m->named_buffers()) kv.value().uniform_(0, 0.05);
  return m;
}

std::string tmpdir(const std::string& name) {
  std::string d = std::filesystem::temp_directory_path() / ("grpo_model_test_" + std::to_string(::getpid())) / name;
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace

TEST(Model, GroupedExpertsEqualPerTokenLoop) {
  auto m = tiny();
  auto moe = m->model->layers[1]->as<DecoderLayer>()->moe;
  ASSERT_TRUE(moe);
  at::manual_seed(0);
  Tensor x = at::randn({37, 32});
  auto r = moe->gate(x);
  Tensor grouped = moe->experts(x, r.experts, r.weights);
  Tensor naive = at::zeros_like(x);
  auto& E = *moe->experts;
  for (int64_t n = 0; n < x.size(0); ++n)
    for (int64_t j = 0; j < r.experts.size(1); ++j) {
      int64_t e = r.experts[n][j].item<int64_t>();
      Tensor gu = at::matmul(x[n], E.gate_up_proj[e].t());
      Tensor h = at::silu(gu.narrow(0, 0, 16)) * gu.narrow(0, 16, 16);
      naive[n] += r.weights[n][j] * at::matmul(h, E.down_proj[e].t());
    }
  EXPECT_TRUE(at::allclose(grouped, naive, 1e-5, 1e-5)) << (grouped - naive).abs().max();
}

// The experts' dispatch and combine as gathers through the pairs' permutation (adopted; turned
// off by GRPO_KERNEL_TRIAL=-gather_combine) give index_add's output and every gradient (the tokens, the
// routing weights, both expert weights) within fp32 rounding (the k terms add in another order).
TEST(Model, GatherCombineGivesTheIndexAddGradients) {
  auto m = tiny();
  auto& E = *m->model->layers[1]->as<DecoderLayer>()->moe->experts;
  at::manual_seed(2);
  const Tensor x0 = at::randn({37, 32}), dy = at::randn({37, 32});
  const Tensor experts = at::stack({at::randperm(8).narrow(0, 0, 3), at::randperm(8).narrow(0, 0, 3)}).repeat({19, 1})
                             .narrow(0, 0, 37);  // (37, 3), distinct experts a token
  const Tensor w0 = at::rand({37, 3});
  auto run = [&](const char* kernels) {
    KernelTrialScope scope(kernels);
    for (auto& p : E.parameters()) p.mutable_grad() = Tensor();
    Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_();
    Tensor y = E.forward(x, experts, w);
    y.backward(dy);
    return std::vector<Tensor>{y.detach(), x.grad(), w.grad(), E.gate_up_proj.grad().clone(), E.down_proj.grad().clone()};
  };
  const auto plain = run("-gather_combine"), gathered = run("");
  const char* names[] = {"output", "x grad", "weights grad", "gate_up grad", "down grad"};
  for (size_t i = 0; i < plain.size(); ++i) {
    ASSERT_TRUE(gathered[i].defined()) << names[i];
    EXPECT_TRUE(at::allclose(gathered[i], plain[i], 1e-5, 1e-5)) << names[i] << ": " << (gathered[i] - plain[i]).abs().max();
  }
  EXPECT_GT(plain[1].abs().sum().item<double>(), 0);
}

// The output head's log-probs formed a few rows at a time, the backward forming each chunk's
// logits again: the plain chain's values to the bit (and its entropies), and its gradients in h
// and W (fp32: to rounding; bf16: as close as the chain's own rounding allows); W frozen too.
TEST(Model, TokenLogprobsEqualThePlainChain) {
  at::manual_seed(5);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    const Tensor h0 = at::randn({37, 32}).to(dtype), w0 = (at::randn({97, 32}) * 0.5).to(dtype);
    const Tensor targets = at::randint(97, {37}, at::kLong), g = at::randn({37});
    auto run = [&](bool chunked, bool train_w) {
      Tensor h = h0.clone().requires_grad_(), w = w0.clone().requires_grad_(train_w), entropy;
      Tensor lp;
      if (chunked) {
        lp = token_logprobs(h, w, targets, &entropy, 5);
      } else {  // the chain autograd runs, over the same chunks (a CPU product's bits may depend on its rows)
        std::vector<Tensor> lps, ents;
        for (int64_t s = 0; s < 37; s += 5) {
          const int64_t n = std::min<int64_t>(5, 37 - s);
          Tensor lg = at::linear(h.narrow(0, s, n), w).to(at::kFloat), lse = lg.logsumexp(-1);
          lps.push_back(lg.gather(1, targets.narrow(0, s, n).unsqueeze(1)).squeeze(1) - lse);
          ents.push_back((lse - (lg.softmax(-1) * lg).sum(-1)).detach());
        }
        lp = at::cat(lps);
        entropy = at::cat(ents);
      }
      lp.backward(g);
      return std::vector<Tensor>{lp.detach(), entropy, h.grad(), train_w ? w.grad() : Tensor()};
    };
    const auto plain = run(false, true), chunked = run(true, true);
    EXPECT_TRUE(at::equal(chunked[0], plain[0]));
    EXPECT_TRUE(at::equal(chunked[1], plain[1]));
    const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
    for (int i : {2, 3}) {
      const double scale = plain[i].to(at::kFloat).abs().max().item<double>();
      EXPECT_GT(scale, 0);
      EXPECT_LT((chunked[i].to(at::kFloat) - plain[i].to(at::kFloat)).abs().max().item<double>(), tol * scale) << i;
    }
    const auto frozen = run(true, false);
    EXPECT_FALSE(frozen[3].defined());
    EXPECT_TRUE(at::equal(frozen[2], chunked[2]));
  }
}

// The MTP module's head through token_logprobs (a plain weight) against the chain autograd keeps
// (the same head with an adapter of zeros, which takes that path): the same log-probs to the bit,
// and the same gradients for the head, the module and the trunk.
TEST(Model, MtpHeadLogprobsChunkedEqualTheKeptChain) {
  std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}, {3, 4}, {7, 7, 7, 2}};
  std::vector<std::vector<int64_t>> completions = {{11, 12, 13, 14}, {20, 21, 22}, {30, 31, 32}};
  auto run = [&](bool adapter) {
    at::manual_seed(5);
    auto m = tiny();
    auto& head = *m->mtp_module(1).shared_head_head;
    if (adapter) {
      head.add_lora(2, 1.0, 0.0, at::make_generator<at::CPUGeneratorImpl>(3));  // lora_B zeros: y + 0
      head.lora_A->weight.set_requires_grad(false);
      head.lora_B->weight.set_requires_grad(false);
    }
    CausalLM::CompletionOptions o;
    o.mtp_depths = 1;
    auto out = m->completion_forward(prompts, completions, o);
    Tensor lp = at::cat(out.mtp_logprobs[0]);
    lp.backward(at::linspace(-1, 1, lp.size(0)));
    std::vector<Tensor> r = {lp.detach(), head.weight.grad(), m->mtp_module(1).eh_proj->weight.grad(),
                             m->model->embed_tokens->weight.grad()};
    return r;
  };
  const auto kept = run(true), chunked = run(false);
  ASSERT_GT(chunked[0].numel(), 0);
  EXPECT_TRUE(at::equal(chunked[0], kept[0]));
  for (int i : {1, 2, 3}) {
    ASSERT_TRUE(kept[i].defined() && chunked[i].defined()) << i;
    EXPECT_GT(kept[i].abs().max().item<double>(), 0) << i;
    EXPECT_TRUE(at::allclose(chunked[i], kept[i], 1e-5, 1e-6)) << i;
  }
}

TEST(Model, GroupLimitedRoutingStaysInTopGroupsAndBiasOnlySelects) {
  auto m = tiny();
  auto gate = m->model->layers[1]->as<DecoderLayer>()->moe->gate;
  at::manual_seed(1);
  Tensor x = at::randn({64, 32});
  auto r = gate(x);
  // Each token's experts lie in at most topk_group (2) of the 4 groups of 2.
  Tensor groups = at::div(r.experts, 2, "floor");
  for (int64_t n = 0; n < 64; ++n) EXPECT_LE(std::get<0>(at::_unique(groups[n])).numel(), 2);
  // Weights: normalised unbiased sigmoid scores times 2.5.
  Tensor w = r.scores.gather(1, r.experts);
  EXPECT_TRUE(at::allclose(r.weights, w / w.sum(-1, true) * 2.5, 1e-6, 1e-6));
  // A large bias on expert 5 makes every token pick it, but its weight stays the unbiased score.
  {
    at::NoGradGuard g;
    gate->e_score_correction_bias.zero_();
    gate->e_score_correction_bias[5] = 100.0;
  }
  auto rb = gate(x);
  EXPECT_TRUE((rb.experts == 5).any(1).all().item<bool>());
  Tensor wb = rb.scores.gather(1, rb.experts);
  EXPECT_TRUE(at::allclose(rb.weights, wb / wb.sum(-1, true) * 2.5, 1e-6, 1e-6));
  EXPECT_LT(rb.scores.max().item<float>(), 1.0f);
}

TEST(Model, BatchedWithPaddingEqualsOneAtATime) {
  auto m = tiny();
  at::NoGradGuard g;
  std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}, {3}, {7, 7, 7, 7, 7, 2}, {4, 8}};
  std::vector<std::vector<int64_t>> completions = {{11, 12, 13, 14}, {20}, {30, 31}, {}};
  auto batched = m->completion_logprobs(prompts, completions);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto single = m->completion_logprobs({prompts[i]}, {completions[i]});
    ASSERT_EQ(batched[i].numel(), (int64_t)completions[i].size());
    EXPECT_TRUE(at::allclose(batched[i], single[0], 1e-5, 1e-6)) << i;
  }
  // Log-probs are log-probabilities: all <= 0 and they match a full log_softmax.
  Tensor ids = at::tensor(std::vector<int64_t>{1, 5, 9, 11, 12, 13}).unsqueeze(0);
  Tensor lsm = m->logits(m->hidden_states(ids)).log_softmax(-1);
  for (int j = 0; j < 3; ++j)
    EXPECT_NEAR(batched[0][j].item<float>(), lsm[0][2 + j][completions[0][j]].item<float>(), 1e-5);
}

TEST(Model, LeftPaddingWithMaskAndPositionsEqualsUnpadded) {
  auto m = tiny();
  at::NoGradGuard g;
  Tensor ids = at::tensor(std::vector<int64_t>{4, 8, 15, 16, 23}).unsqueeze(0);
  Tensor ref = m->hidden_states(ids);
  Tensor padded = at::tensor(std::vector<int64_t>{0, 0, 4, 8, 15, 16, 23}).unsqueeze(0);
  Tensor mask = at::tensor(std::vector<int64_t>{0, 0, 1, 1, 1, 1, 1}).unsqueeze(0);
  Tensor pos = at::tensor(std::vector<int64_t>{0, 0, 0, 1, 2, 3, 4}).unsqueeze(0);
  Tensor out = m->hidden_states(padded, mask, pos).narrow(1, 2, 5);
  EXPECT_TRUE(at::allclose(out, ref, 1e-5, 1e-5)) << (out - ref).abs().max();
}

TEST(Model, SaveLoadRoundTripIncludingMTPAndBias) {
  auto m = tiny(7);
  std::string dir = tmpdir("roundtrip");
  save_model(*m, kTinyV3, dir);
  auto loaded = load_model(dir);
  EXPECT_EQ(loaded->config().num_nextn_predict_layers, 1);
  auto a = m->named_parameters(true), b = loaded->named_parameters(true);
  ASSERT_EQ(a.size(), b.size());
  for (auto& kv : a) EXPECT_TRUE(at::equal(kv.value(), b[kv.key()])) << kv.key();
  auto ba = m->named_buffers(true), bb = loaded->named_buffers(true);
  for (auto& kv : ba) EXPECT_TRUE(at::equal(kv.value(), bb[kv.key()])) << kv.key();
  // Per-expert HF names on disk.
  auto ck = io::SafetensorsCheckpoint::open_dir(dir);
  EXPECT_NE(ck.find("model.layers.1.mlp.experts.7.down_proj.weight"), nullptr);
  EXPECT_NE(ck.find("model.layers.3.eh_proj.weight"), nullptr);
  // Sharded save loads the same.
  std::string sdir = tmpdir("sharded");
  save_model(*m, kTinyV3, sdir, {at::kFloat, 20000});
  EXPECT_TRUE(std::filesystem::exists(sdir + "/model.safetensors.index.json"));
  auto s = load_model(sdir);
  for (auto& kv : a) EXPECT_TRUE(at::equal(kv.value(), s->named_parameters(true)[kv.key()])) << kv.key();
}

TEST(Model, Fp8BlockScaledWeightsDequantiseOnLoad) {
  auto m = tiny(3);
  std::string dir = tmpdir("fp8");
  save_model(*m, kTinyV3, dir);
  // Rewrite one weight (q_b_proj: 48 x 24) as F8_E4M3 with 16x16 blocks.
  auto f = io::SafetensorsFile::open(dir + "/model.safetensors");
  std::vector<std::pair<std::string, Tensor>> keep;
  const std::string wname = "model.layers.0.self_attn.q_b_proj.weight";
  Tensor w = m->named_parameters(true)[wname].detach().clone();
  Tensor scale = at::rand({3, 2}) + 0.5;  // (ceil(48/16), ceil(24/16))
  Tensor expanded = scale.repeat_interleave(16, 0).narrow(0, 0, 48).repeat_interleave(16, 1).narrow(1, 0, 24);
  Tensor q = (w / expanded).to(at::kFloat8_e4m3fn);
  Tensor deq = q.to(at::kFloat) * expanded;
  for (const auto& t : f->tensors()) {
    if (t.name == wname) continue;
    keep.emplace_back(t.name, at::from_blob(const_cast<uint8_t*>(t.data), t.shape, at::kFloat).clone());
  }
  std::vector<io::TensorToWrite> items;
  for (auto& [n, t] : keep) items.push_back({n, io::DType::F32, t.sizes().vec(), t.data_ptr(), (size_t)t.nbytes()});
  items.push_back({wname, io::DType::F8_E4M3, {48, 24}, q.data_ptr(), (size_t)q.nbytes()});
  items.push_back({wname + "_scale_inv", io::DType::F32, {3, 2}, scale.data_ptr(), (size_t)scale.nbytes()});
  f.reset();
  io::write_safetensors(dir + "/model.safetensors", items);
  std::string cfg = std::string(kTinyV3);
  cfg = cfg.substr(0, cfg.rfind('}')) + R"(, "quantization_config": {"quant_method": "fp8", "weight_block_size": [16, 16]}})";
  std::ofstream(dir + "/config.json") << cfg;
  auto loaded = load_model(dir);
  Tensor got = loaded->named_parameters(true)[wname];
  EXPECT_TRUE(at::equal(got, deq));
  EXPECT_FALSE(at::equal(got, w)) << "quantisation should have changed the weight";
}

TEST(Model, MissingAndMisshapenTensorsNameFileAndTensor) {
  auto m = tiny(5);
  std::string dir = tmpdir("bad");
  save_model(*m, kTinyV3, dir);
  std::string cfg = std::string(kTinyV3);
  // Config says a wider kv_lora_rank than the weights have.
  std::string wider = cfg;
  wider.replace(wider.find("\"kv_lora_rank\": 16"), 18, "\"kv_lora_rank\": 20");
  std::ofstream(dir + "/config.json") << wider;
  try {
    load_model(dir);
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("kv_a_proj_with_mqa.weight"), std::string::npos) << msg;
  }
  // Config with more layers than the checkpoint holds.
  std::string deeper = cfg;
  deeper.replace(deeper.find("\"num_hidden_layers\": 3"), 22, "\"num_hidden_layers\": 5");
  std::ofstream(dir + "/config.json") << deeper;
  try {
    load_model(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'model.layers.4."), std::string::npos) << e.what();
  }
}

TEST(Model, GroupedGemmExpertsEqualPerExpertLoopOnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  auto m = tiny();
  m->to_device_dtype(at::kCUDA, at::kBFloat16);
  auto experts = m->model->layers[1]->as<DecoderLayer>()->moe->experts;
  auto gate = m->model->layers[1]->as<DecoderLayer>()->moe->gate;
  ASSERT_TRUE(experts->use_grouped_mm(at::empty({1}, at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16))));
  at::manual_seed(2);
  Tensor x = at::randn({256, 32}, at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16)).requires_grad_();
  auto r = gate(x.detach());
  r.weights = r.weights.detach();  // the test differentiates the experts only
  Tensor grouped = experts(x, r.experts, r.weights);
  grouped.sum().backward();
  Tensor g_grouped = experts->gate_up_proj.grad().clone(), gx = x.grad().clone();
  experts->gate_up_proj.mutable_grad().reset();
  x.mutable_grad().reset();
  // Same computation through the per-expert loop, in fp32 as the reference.
  Tensor xf = x.detach().to(at::kFloat).requires_grad_();
  auto wf = experts->gate_up_proj.detach().to(at::kFloat).requires_grad_();
  auto df = experts->down_proj.detach().to(at::kFloat);
  Tensor ref = at::zeros_like(xf);
  for (int64_t n = 0; n < 256; ++n)
    for (int64_t j = 0; j < r.experts.size(1); ++j) {
      int64_t e = r.experts[n][j].item<int64_t>();
      Tensor gu = at::matmul(xf[n], wf[e].t());
      Tensor h = at::silu(gu.narrow(0, 0, 16)) * gu.narrow(0, 16, 16);
      ref = ref.index_add(0, at::tensor({n}, at::TensorOptions().dtype(at::kLong).device(at::kCUDA)),
                          (r.weights[n][j] * at::matmul(h, df[e].t())).unsqueeze(0));
    }
  ref.sum().backward();
  auto close = [](const Tensor& a, const Tensor& b) {
    return ((a.to(at::kFloat) - b).abs().max() / b.abs().max().clamp_min(1e-6)).item<float>();
  };
  EXPECT_LT(close(grouped, ref), 2e-2);
  EXPECT_LT(close(gx, xf.grad()), 2e-2);
  EXPECT_LT(close(g_grouped, wf.grad()), 2e-2);
}

// Activation checkpointing recomputes each layer in the backward pass: the gradients (of every
// weight, and of LoRA adapters over a frozen base, whose only path is through the recomputed
// layers) equal the plain forward's, and the loss is the same.
TEST(Model, GradientCheckpointingGivesThePlainGradients) {
  std::vector<std::vector<int64_t>> prompts = {{1, 5, 9}, {3, 4}, {7, 7, 7, 2}};
  std::vector<std::vector<int64_t>> completions = {{11, 12, 13, 14}, {20, 21}, {30, 31, 32}};
  auto grads = [&](bool checkpointing, bool lora) {
    at::manual_seed(5);  // tiny() draws the routing bias from the global generator
    auto m = tiny();
    if (lora) {
      for (auto& p : m->parameters()) p.set_requires_grad(false);
      add_lora(*m, LoraConfig{4, 8, 0, {"all-linear"}}, 3);
      at::NoGradGuard g;
      for (auto& [name, t] : lora_parameters(*m)) t.normal_(0, 0.3);  // lora_B away from zero
    }
    m->gradient_checkpointing = checkpointing;
    Tensor loss = -at::cat(m->completion_logprobs(prompts, completions)).sum();
    loss.backward();
    std::vector<std::pair<std::string, Tensor>> out = {{"loss", loss.detach()}};
    for (auto& kv : m->named_parameters())
      if (kv.value().requires_grad()) out.emplace_back(kv.key(), kv.value().grad().defined() ? kv.value().grad() : Tensor());
    return out;
  };
  for (bool lora : {false, true}) {
    auto plain = grads(false, lora), ck = grads(true, lora);
    ASSERT_EQ(plain.size(), ck.size());
    int checked = 0;
    for (size_t i = 0; i < plain.size(); ++i) {
      ASSERT_EQ(plain[i].first, ck[i].first);
      ASSERT_EQ(plain[i].second.defined(), ck[i].second.defined()) << plain[i].first;
      if (!plain[i].second.defined()) continue;
      EXPECT_TRUE(at::allclose(plain[i].second, ck[i].second, 1e-5, 1e-6)) << plain[i].first << " lora " << lora;
      checked += plain[i].second.abs().max().item<double>() > 0;
    }
    EXPECT_GT(checked, lora ? 10 : 30) << "lora " << lora;
  }
}

// Adapters on the routed experts: the grouped path's low-rank side path (bf16, CUDA) gives the
// per-expert loop's outputs and adapter gradients (fp32 reference on the GPU), for a rank the
// grouped GEMMs take (8) and one they do not (4: the weight is formed instead).
TEST(Model, GroupedGemmExpertAdaptersEqualPerExpertLoopOnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (int64_t r : {8, 4}) {
    at::manual_seed(3);
    auto m = tiny();
    const LoraConfig lc{r, 2.0 * r, 0, {"gate_proj", "up_proj", "down_proj"}};
    add_lora(*m, lc, 3);
    {
      at::NoGradGuard g;
      for (auto& [name, t] : lora_parameters(*m)) t.normal_(0, 0.5);
    }
    auto reference = std::make_shared<CausalLM>(m->config());
    add_lora(*reference, lc, 3);
    copy_weights(*reference, *m);
    reference->to_device_dtype(at::kCUDA, at::kFloat);
    m->to_device_dtype(at::kCUDA, at::kBFloat16);
    auto experts = m->model->layers[1]->as<DecoderLayer>()->moe->experts;
    auto ref_experts = reference->model->layers[1]->as<DecoderLayer>()->moe->experts;
    Tensor x = at::randn({256, 32}, at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16));
    auto rt = m->model->layers[1]->as<DecoderLayer>()->moe->gate(x);
    Tensor ew = rt.weights.detach();
    // fp32 loop on CUDA: GRPO_MOE_LOOP is read once, so the reference runs in fp32 (never grouped).
    Tensor grouped = experts(x, rt.experts, ew);
    grouped.to(at::kFloat).pow(2).sum().backward();
    Tensor ref = ref_experts(x.to(at::kFloat), rt.experts, ew);
    ref.pow(2).sum().backward();
    auto close = [](const Tensor& a, const Tensor& b) {
      return ((a.to(at::kFloat) - b).abs().max() / b.abs().max().clamp_min(1e-6)).item<float>();
    };
    EXPECT_LT(close(grouped, ref), 3e-2) << "r " << r;
    EXPECT_LT(close(experts->gate_up_lora_B.grad(), ref_experts->gate_up_lora_B.grad()), 5e-2) << "r " << r;
    EXPECT_LT(close(experts->down_lora_A.grad(), ref_experts->down_lora_A.grad()), 5e-2) << "r " << r;
    // The adapters matter: without them the output moves by far more than the tolerance.
    experts->lora_enabled = false;
    EXPECT_GT(close(experts(x, rt.experts, ew).detach(), ref.detach()), 0.1) << "r " << r;
  }
}

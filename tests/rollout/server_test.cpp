// The rollout server over loopback: results equal the in-process engine's, bad requests get an
// error naming the prompt while the server keeps serving, deadlines hold, concurrent calls share
// the batch, and UpdateWeights switches the policy and stamps its version.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <filesystem>
#include <thread>

#include "model/checkpoint.h"
#include "model/lora.h"
#include "rollout/engine.h"
#include "rollout/rpc.h"
#include "rollout/service.h"
#include "rpc/health.h"
#include "util/error.h"
#include "util/files.h"

using namespace grpo;
using namespace grpo::rollout;

namespace {

const char* kTiny = R"({
  "model_type": "deepseek_v3", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": null, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
  "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "routed_scaling_factor": 1.0,
  "max_position_embeddings": 128, "eos_token_id": 2, "num_nextn_predict_layers": 0})";

std::shared_ptr<model::CausalLM> tiny(uint64_t seed) {
  auto m = std::make_shared<model::CausalLM>(parse_model_config(kTiny, "tiny"));
  model::init_weights(*m, seed);
  at::NoGradGuard g;
  for (auto& p : m->parameters())
    if (p.dim() > 1) p.mul_(8);
  return m;
}

std::vector<PromptInput> id_prompts(int count) {
  std::vector<PromptInput> ps;
  for (int i = 0; i < count; ++i) {
    PromptInput p;
    p.prompt_index = i;
    for (int t = 0; t < 3 + 5 * i; ++t) p.ids.push_back((7 * t + i) % 97);
    ps.push_back(p);
  }
  return ps;
}

std::vector<Completion> collect(Backend& b, const std::vector<PromptInput>& ps, const SamplingParams& sp,
                                bool ignore_eos = false) {
  std::vector<Completion> out;
  b.generate(ps, sp, ignore_eos, [&](const Completion& c, const std::vector<int64_t>&) {
    out.push_back(c);
    return true;
  });
  std::sort(out.begin(), out.end(), [](const Completion& x, const Completion& y) {
    return std::make_pair(x.prompt_index, x.sample_index) < std::make_pair(y.prompt_index, y.sample_index);
  });
  return out;
}

struct Served {
  explicit Served(RolloutServerOptions o = {}) : server(backend, "127.0.0.1", 0, o) {}
  std::shared_ptr<model::CausalLM> model = tiny(1);
  EngineBackend backend{model, nullptr, EngineOptions{}};
  RolloutServer server;
  std::string address = "127.0.0.1:" + std::to_string(server.port());
};

std::string testdata(const std::string& name) { return std::string(GRPO_TEST_SOURCE_DIR) + "/rpc/testdata/" + name; }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(RolloutServer, ServesWhatTheEngineGivesAndAnswersHealthAndInfo) {
  Served s;
  // gRPC's standard health protocol: the server and its service are SERVING, other names NOT_FOUND.
  EXPECT_EQ(rpc::check_health(s.address, 5), "SERVING");
  EXPECT_EQ(rpc::check_health(s.address, 5, "grpo.v1.RolloutService"), "SERVING");
  EXPECT_THROW(rpc::check_health(s.address, 5, "grpo.v1.NoSuchService"), grpo::Error);
  RolloutClient client(s.address);
  auto info = client.info();
  EXPECT_EQ(info.vocab_size, 97);
  EXPECT_EQ(info.max_context, 128);
  EXPECT_EQ(info.eos_token_id, 2);
  SamplingParams sp;
  sp.n = 3;
  sp.max_new_tokens = 16;
  sp.seed = 4;
  auto remote = collect(client, id_prompts(6), sp);
  Engine local(s.model, nullptr, {});
  std::vector<Request> rs;
  for (auto& p : id_prompts(6)) {
    SamplingParams q = sp;
    q.stop_token_ids = {2};  // the server adds eos unless told to ignore it
    rs.push_back({p.prompt_index, p.ids, q});
  }
  auto expect = local.generate(rs);
  ASSERT_EQ(remote.size(), expect.size());
  for (size_t i = 0; i < remote.size(); ++i) {
    EXPECT_EQ(remote[i].token_ids, expect[i].token_ids);
    EXPECT_EQ(remote[i].finish_reason, expect[i].finish_reason);
    ASSERT_EQ(remote[i].logprobs.size(), expect[i].logprobs.size());
    for (size_t j = 0; j < remote[i].logprobs.size(); ++j) EXPECT_NEAR(remote[i].logprobs[j], expect[i].logprobs[j], 1e-6);
  }
}

TEST(RolloutServer, BadRequestsNameThePromptAndTheServerKeepsServing) {
  Served s;
  RolloutClient client(s.address);
  SamplingParams sp;
  sp.max_new_tokens = 4;
  auto expect_error = [&](std::vector<PromptInput> ps, SamplingParams p, const std::string& needle) {
    try {
      collect(client, ps, p);
      FAIL() << "accepted: " << needle;
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  auto ps = id_prompts(3);
  auto bad = ps;
  bad[1].ids.clear();
  expect_error(bad, sp, "prompt 1: empty prompt");
  bad = ps;
  bad[2].ids.assign(200, 5);
  expect_error(bad, sp, "prompt 2: prompt of 200 tokens does not fit the context of 128");
  bad = ps;
  bad[0].is_text = true;
  bad[0].text = "hello";
  expect_error(bad, sp, "prompt 0: a text prompt needs a tokenizer");
  SamplingParams p = sp;
  p.n = -1;
  expect_error(ps, p, "n must be at least 1");
  p = sp;
  p.temperature = -1;
  expect_error(ps, p, "temperature");
  // Still serving.
  EXPECT_EQ(collect(client, ps, sp).size(), 3u);
}

TEST(RolloutServer, CallsCarryDeadlines) {
  Served s;
  RolloutClient hurried(s.address, /*generate_timeout_seconds=*/0.001);
  SamplingParams sp;
  sp.n = 64;
  sp.max_new_tokens = 100;
  try {
    collect(hurried, id_prompts(8), sp, true);
    FAIL() << "a 1 ms deadline did not expire";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("DEADLINE_EXCEEDED"), std::string::npos) << e.what();
  }
  RolloutClient client(s.address);
  sp.n = 1;
  sp.max_new_tokens = 3;
  EXPECT_EQ(collect(client, id_prompts(2), sp).size(), 2u);
}

TEST(RolloutServer, ConcurrentCallsEachGetTheirOwnCompletions) {
  Served s;
  SamplingParams sp;
  sp.n = 2;
  sp.max_new_tokens = 12;
  std::vector<std::vector<Completion>> results(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      RolloutClient c(s.address);
      SamplingParams q = sp;
      q.seed = 100 + t;
      results[t] = collect(c, id_prompts(3 + t), q, true);
    });
  for (auto& th : threads) th.join();
  Engine local(s.model, nullptr, {});
  for (int t = 0; t < 4; ++t) {
    std::vector<Request> rs;
    for (auto& p : id_prompts(3 + t)) {
      SamplingParams q = sp;
      q.seed = 100 + t;
      rs.push_back({p.prompt_index, p.ids, q});
    }
    auto expect = local.generate(rs);
    ASSERT_EQ(results[t].size(), expect.size());
    for (size_t i = 0; i < expect.size(); ++i) EXPECT_EQ(results[t][i].token_ids, expect[i].token_ids);
  }
}

TEST(RolloutServer, UpdateWeightsSwitchesThePolicyAndStampsTheVersion) {
  Served s;
  std::string dir = std::filesystem::temp_directory_path() / ("grpo_rollout_update_" + std::to_string(::getpid()));
  auto other = tiny(2);
  model::save_model(*other, kTiny, dir);
  RolloutClient client(s.address);
  SamplingParams sp;
  sp.n = 2;
  sp.max_new_tokens = 10;
  auto before = collect(client, id_prompts(3), sp, true);
  EXPECT_EQ(before[0].weight_version, 0);
  client.update_weights(dir, 7);
  EXPECT_EQ(client.info().weight_version, 7);
  auto after = collect(client, id_prompts(3), sp, true);
  for (const auto& c : after) EXPECT_EQ(c.weight_version, 7);
  // The served policy is now `other`: its log-probs are the recompute under `other`.
  std::vector<std::vector<int64_t>> ps, cs;
  auto prompts = id_prompts(3);
  for (const auto& c : after) {
    ps.push_back(prompts[c.prompt_index].ids);
    cs.push_back(c.token_ids);
  }
  at::NoGradGuard g;
  auto ref = other->completion_logprobs(ps, cs);
  for (size_t i = 0; i < after.size(); ++i)
    for (size_t j = 0; j < after[i].logprobs.size(); ++j) EXPECT_NEAR(after[i].logprobs[j], ref[i][j].item<float>(), 1e-4);
  EXPECT_NE(before[0].token_ids, after[0].token_ids);
  // A checkpoint that does not fit is refused, naming the problem; the server keeps its weights.
  try {
    client.update_weights(dir + "/missing", 8);
    FAIL() << "loaded a missing checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  EXPECT_EQ(client.info().weight_version, 7);
  // (std::filesystem::remove_all resolves to libtorch's copy, which crashes: use rm.)
  EXPECT_EQ(std::system(("rm -rf '" + dir + "'").c_str()), 0);
}

// A LoRA adapter directory (PEFT's files over a base checkpoint) updates a server that holds a plain
// model: it serves the base with the adapter folded in.
TEST(RolloutServer, UpdateWeightsTakesALoraAdapter) {
  Served s;
  std::string root = std::filesystem::temp_directory_path() / ("grpo_rollout_lora_" + std::to_string(::getpid()));
  auto base = tiny(2);
  model::save_model(*base, kTiny, root + "/base");
  auto adapted = tiny(2);
  model::add_lora(*adapted, {4, 8, 0, {"all-linear"}}, 5);
  {
    at::NoGradGuard g;
    for (auto& [name, t] : model::lora_parameters(*adapted)) t.normal_(0, 0.5);
  }
  model::save_adapter(*adapted, {4, 8, 0, {"all-linear"}}, "../base", root + "/adapter");
  RolloutClient client(s.address);
  SamplingParams sp;
  sp.n = 2;
  sp.max_new_tokens = 10;
  client.update_weights(root + "/adapter", 3);
  auto after = collect(client, id_prompts(3), sp, true);
  std::vector<std::vector<int64_t>> ps, cs;
  auto prompts = id_prompts(3);
  for (const auto& c : after) {
    ps.push_back(prompts[c.prompt_index].ids);
    cs.push_back(c.token_ids);
  }
  at::NoGradGuard g;
  auto ref = adapted->completion_logprobs(ps, cs);
  model::AdaptersDisabled off(*adapted);
  auto plain = adapted->completion_logprobs(ps, cs);
  double moved = 0;
  for (size_t i = 0; i < after.size(); ++i)
    for (size_t j = 0; j < after[i].logprobs.size(); ++j) {
      // The server computes with the adapter folded into the weights (W + s B A), the reference
      // with it beside them (x W^T + s (x A^T) B^T): fp32 roundings apart, which these large
      // adapters carry to about 3e-5 of a log-prob's size (1.6e-4 at -4.6 was seen).
      const double want = ref[i][j].item<double>();
      EXPECT_NEAR(after[i].logprobs[j], want, 1e-4 * std::max(1.0, std::abs(want)));
      moved = std::max(moved, std::abs(ref[i][j].item<double>() - plain[i][j].item<double>()));
    }
  EXPECT_GT(moved, 1e-2) << "the adapter must change what is served";
  EXPECT_EQ(std::system(("rm -rf '" + root + "'").c_str()), 0);
}

TEST(RolloutServer, SizesPastTheLimitsAreRefusedNamingTheLimitAndNothingOverflows) {
  Served s;
  RolloutClient client(s.address);
  SamplingParams sp;
  sp.max_new_tokens = 4;
  sp.n = int64_t(1) << 62;  // once overflowed the cache check and generated forever
  EXPECT_NE(error_of([&] { collect(client, id_prompts(1), sp); }).find("RESOURCE_EXHAUSTED: n = 4611686018427387904 is more than this server allows (--max-samples 1024)"),
            std::string::npos);
  // A hugely negative n with several prompts once overflowed the samples-per-call product (found
  // by the rollout_request fuzz target): it is the engine's clear error instead.
  sp.n = -(int64_t(1) << 62);
  const std::string negative = error_of([&] { collect(client, id_prompts(3), sp); });
  EXPECT_NE(negative.find("n must be at least 1"), std::string::npos) << negative;
  sp.n = 1;
  std::vector<PromptInput> many = id_prompts(1);
  many.resize(5000, many[0]);
  EXPECT_NE(error_of([&] { collect(client, many, sp); }).find("--max-prompts 4096"), std::string::npos);
  PromptInput text;
  text.is_text = true;
  text.text.assign(2 << 20, 'x');
  EXPECT_NE(error_of([&] { collect(client, {text}, sp); }).find("prompt 0: text bytes = 2097152 is more than this server allows (--max-prompt-bytes"),
            std::string::npos);
  // Direct engine use is bounded too: n past EngineOptions::max_samples.
  Engine engine(tiny(1), nullptr);
  Request r;
  r.prompt_ids = {1, 2, 3};
  r.params.n = int64_t(1) << 62;
  EXPECT_NE(error_of([&] { engine.check(r, "request 0"); }).find("request 0: n = 4611686018427387904 is more than the 65536"),
            std::string::npos);
  EXPECT_EQ(collect(client, id_prompts(2), sp).size(), 2u);  // still serving
  EXPECT_EQ(client.info().running, 0);
}

TEST(RolloutServer, ACallerThatLeavesFreesItsSequences) {
  Served s;
  RolloutClient client(s.address);
  SamplingParams sp;
  sp.n = 8;
  sp.max_new_tokens = 120;  // long: finishing them all would take a while
  std::vector<Completion> got;
  client.generate(id_prompts(2), sp, /*ignore_eos=*/true, [&](const Completion& c, const std::vector<int64_t>&) {
    got.push_back(c);
    return false;  // leave after the first
  });
  EXPECT_EQ(got.size(), 1u);
  // The server notices within its 100 ms poll and frees the rest.
  for (int i = 0; i < 50 && (client.info().running > 0 || client.info().waiting > 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(client.info().running, 0);
  EXPECT_EQ(client.info().waiting, 0);
  EXPECT_EQ(s.backend.stats().num_blocks, s.backend.stats().num_blocks);
  sp.n = 1;
  sp.max_new_tokens = 3;
  EXPECT_EQ(collect(client, id_prompts(2), sp).size(), 2u);
}

TEST(RolloutServer, ABearerTokenIsRequiredWhenSet) {
  RolloutServerOptions o;
  o.security.token = "s3cret-token";
  Served s(o);
  SamplingParams sp;
  sp.max_new_tokens = 3;
  RolloutClient none(s.address);
  EXPECT_NE(error_of([&] { collect(none, id_prompts(1), sp); }).find("UNAUTHENTICATED"), std::string::npos);
  EXPECT_NE(error_of([&] { none.info(); }).find("UNAUTHENTICATED"), std::string::npos);
  EXPECT_NE(error_of([&] { none.update_weights("/nonexistent", 1); }).find("UNAUTHENTICATED"), std::string::npos);
  rpc::Security wrong;
  wrong.token = "s3cret-tokeN";
  RolloutClient bad(s.address, 3600, 30, wrong);
  EXPECT_NE(error_of([&] { collect(bad, id_prompts(1), sp); }).find("UNAUTHENTICATED"), std::string::npos);
  rpc::Security right;
  right.token = "s3cret-token";
  RolloutClient good(s.address, 3600, 30, right);
  EXPECT_EQ(collect(good, id_prompts(2), sp).size(), 2u);
  EXPECT_EQ(rpc::check_health(s.address, 5), "SERVING");  // probes need no token
}

TEST(RolloutServer, TlsWithTheRightCertificateOnly) {
  RolloutServerOptions o;
  o.security.tls_cert = testdata("server.pem");
  o.security.tls_key = testdata("server.key");
  Served s(o);
  SamplingParams sp;
  sp.max_new_tokens = 3;
  rpc::Security trust;
  trust.tls_ca = testdata("server.pem");
  RolloutClient good(s.address, 3600, 5, trust);
  EXPECT_EQ(collect(good, id_prompts(2), sp).size(), 2u);
  rpc::Security other;
  other.tls_ca = testdata("other.pem");
  RolloutClient wrong_ca(s.address, 10, 5, other);
  EXPECT_NE(error_of([&] { wrong_ca.info(); }).find("UNAVAILABLE"), std::string::npos);
  RolloutClient plain(s.address, 10, 5);
  EXPECT_NE(error_of([&] { plain.info(); }).find("UNAVAILABLE"), std::string::npos);
}

TEST(RolloutServer, NonLoopbackNeedsTlsOrATokenOrInsecure) {
  auto model = tiny(1);
  EngineBackend backend(model, nullptr, EngineOptions{});
  std::string msg = error_of([&] { RolloutServer server(backend, "0.0.0.0", 0); });
  EXPECT_NE(msg.find("refusing to listen on 0.0.0.0 without TLS (--tls-cert/--tls-key) or a token (--token-file); pass --insecure"),
            std::string::npos)
      << msg;
  RolloutServerOptions o;
  o.security.insecure = true;
  EXPECT_EQ(error_of([&] { RolloutServer server(backend, "0.0.0.0", 0, o); }), "");
  RolloutServerOptions half;
  half.security.tls_cert = testdata("server.pem");
  EXPECT_NE(error_of([&] { RolloutServer server(backend, "127.0.0.1", 0, half); }).find("both --tls-cert and --tls-key"),
            std::string::npos);
}

TEST(RolloutServer, UpdateWeightsReadsOnlyRegularFilesOfCheckedSize) {
  Served s;
  RolloutClient client(s.address);
  auto dir = std::filesystem::temp_directory_path() / ("grpo_update_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  // A FIFO as config.json and as the weights: refused at once, never waited on.
  ASSERT_EQ(mkfifo((dir / "config.json").c_str(), 0600), 0);
  auto t0 = std::chrono::steady_clock::now();
  std::string msg = error_of([&] { client.update_weights(dir.string(), 1); });
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
  ::unlink((dir / "config.json").c_str());
  ASSERT_EQ(::symlink("/dev/zero", (dir / "config.json").c_str()), 0);
  msg = error_of([&] { client.update_weights(dir.string(), 1); });
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5);
  remove_tree(dir.string());  // (libtorch exports a broken std::filesystem::remove_all)
  SamplingParams sp;
  sp.max_new_tokens = 3;
  EXPECT_EQ(collect(client, id_prompts(1), sp).size(), 1u);  // still serving
}

// Rewards: the format reward against open-r1's cases, the built-ins' definitions, plugins, and
// the worker/client pair under failures (dead workers, a worker stopped mid-batch, deadlines) and
// hostile requests (rewards it does not serve, nested metadata).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/conformance.h"
#include "rewards/builtin.h"
#include "rewards/plugin.h"
#include "rewards/rpc.h"
#include "util/error.h"
#include "util/json.h"

using namespace grpo::rewards;
using json = nlohmann::json;

namespace {

RewardResult score(const std::string& name, const std::string& completion, json options = json::object(),
                   const std::string& reference = "", json metadata = json::object()) {
  auto r = default_registry().make(name, options);
  RewardItem it;
  it.completion = completion;
  it.reference = reference;
  it.metadata = metadata;
  return r->score(it);
}

// Echoes metadata.id (to check that results land where they belong) after sleeping metadata.ms.
class EchoReward : public Reward {
 public:
  RewardResult score(const RewardItem& item) const override {
    int ms = item.metadata.value("ms", 0);
    if (ms) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    RewardResult r;
    r.reward = item.metadata.value("id", -1);
    r.components["echo"] = r.reward;
    return r;
  }
};

// A slow reward (as the code rewards are) that holds its thread until the test opens the gate.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false, entered = false;
};
Gate& gate() {
  static Gate g;
  return g;
}
class GatedReward : public Reward {
 public:
  RewardResult score(const RewardItem&) const override {
    std::unique_lock<std::mutex> lk(gate().mu);
    gate().entered = true;
    gate().cv.notify_all();
    gate().cv.wait(lk, [] { return gate().open; });
    RewardResult r;
    r.reward = 7;
    return r;
  }
  bool slow() const override { return true; }
};

RewardRegistry& echo_registry() {
  static RewardRegistry* r = [] {
    auto* reg = new RewardRegistry();
    register_builtin_rewards(*reg);
    reg->add("echo", [](const json&) { return std::make_unique<EchoReward>(); }, "test");
    reg->add("gated", [](const json&) { return std::make_unique<GatedReward>(); }, "test");
    return reg;
  }();
  return *r;
}

std::vector<RewardItem> echo_items(int n, int ms = 0) {
  std::vector<RewardItem> items(n);
  for (int i = 0; i < n; ++i) items[i].metadata = {{"id", i}, {"ms", ms}};
  return items;
}

WorkerOptions echo_worker(int threads = 4) {
  WorkerOptions o;
  o.default_spec = "echo";
  o.threads = threads;
  return o;
}

}  // namespace

TEST(FormatReward, AllOpenR1CasesAgree) {
  auto cases = grpo::testing::conformance_cases(GRPO_SHARED_DATA, "format_reward_cases.jsonl");
  if (!cases) GTEST_SKIP() << GRPO_SHARED_DATA << "/conformance/format_reward_cases.jsonl not present";
  int total = 0, agree = 0;
  for (const json& r : *cases) {
    bool got = score("format", r["completion"].get<std::string>()).reward == 1.0;
    ++total;
    agree += got == r["expected"].get<bool>();
    if (got != r["expected"].get<bool>()) std::cout << "disagree: " << r["completion"].dump() << "\n";
  }
  EXPECT_EQ(total, 7);
  EXPECT_EQ(agree, total);
}

TEST(BuiltinRewards, Definitions) {
  const std::string good = "<think>\nabc\n</think>\n<answer>\n42\n</answer>";
  EXPECT_EQ(score("tag_count", good).reward, 1.0);
  EXPECT_EQ(score("tag_count", "<think>\nabc\n</think>\n").reward, 0.5);
  EXPECT_EQ(score("tag_count", "<think>\n<think>\n").reward, 0.0);
  EXPECT_EQ(score("format", good, {{"pattern", "(?s)<think>.*</think>.*"}}).reward, 1.0);
  EXPECT_EQ(score("math", good, {}, "42").reward, 1.0);        // inside <answer>
  EXPECT_EQ(score("math", good, {}, "41").reward, 0.0);
  // DAPO overlong: max 100, cache 20 -> 0 up to 80, then linear to -1 at 100, -1 beyond.
  json ol = {{"max_length", 100}, {"cache_length", 20}};
  EXPECT_EQ(score("overlong", "", ol, "", {{"completion_tokens", 80}}).reward, 0.0);
  EXPECT_DOUBLE_EQ(score("overlong", "", ol, "", {{"completion_tokens", 90}}).reward, -0.5);
  EXPECT_EQ(score("overlong", "", ol, "", {{"completion_tokens", 101}}).reward, -1.0);
  EXPECT_DOUBLE_EQ(score("overlong", std::string(95, 'x'), ol).reward, -0.75);  // characters when no token count
  // Language: 3 Latin words and 2 CJK characters in the chain of thought.
  std::string mixed = "<think>one two three 你好</think><answer>x</answer>";
  EXPECT_DOUBLE_EQ(score("language_consistency", mixed).reward, 3.0 / 5.0);
  EXPECT_DOUBLE_EQ(score("language_consistency", mixed, {{"language", "zh"}}).reward, 2.0 / 5.0);
  // Repetition: "a b a b a b" has trigrams aba, bab, aba, bab -> 2 distinct of 4 -> -0.5.
  EXPECT_DOUBLE_EQ(score("repetition", "a b a b a b").reward, -0.5);
  EXPECT_DOUBLE_EQ(score("repetition", "a b c d e").reward, 0.0);
}

TEST(CombinedReward, WeightsComponentsAndPerItemErrors) {
  CombinedReward c("math,format:0.5", default_registry());
  RewardItem it;
  it.completion = "<think>\nx\n</think>\n<answer>\n\\frac{1}{2}\n</answer>";
  it.reference = "0.5";
  auto r = c.score(it);
  EXPECT_DOUBLE_EQ(r.reward, 1.5);
  EXPECT_EQ(r.components["math"], 1.0);
  EXPECT_EQ(r.components["format"], 1.0);
  it.reference = "";
  r = c.score(it);  // math cannot score without a reference; format still counts
  EXPECT_DOUBLE_EQ(r.reward, 0.5);
  EXPECT_NE(r.error.find("math: no reference"), std::string::npos) << r.error;
  EXPECT_THROW(CombinedReward("math,nope", default_registry()), grpo::Error);
  EXPECT_THROW(CombinedReward("math:abc", default_registry()), grpo::Error);
}

TEST(RewardPlugin, ExamplePluginLoadsAndScores) {
  RewardRegistry reg;
  load_reward_plugin(GRPO_KEYWORDS_PLUGIN, reg);
  ASSERT_TRUE(reg.has("keywords"));
  auto r = reg.make("keywords");
  RewardItem it;
  it.completion = "Paris is the capital of France";
  it.metadata = {{"keywords", {"paris", "FRANCE", "Berlin"}}};
  auto res = r->score(it);
  EXPECT_DOUBLE_EQ(res.reward, 2.0 / 3.0);
  it.metadata = json::object();
  auto errs = score_all(*r, {it});
  EXPECT_NE(errs[0].error.find("metadata.keywords"), std::string::npos);
  try {
    load_reward_plugin("/nonexistent/libnothing.so", reg);
    FAIL();
  } catch (const grpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/libnothing.so: cannot load"), std::string::npos) << e.what();
  }
}

TEST(RewardWorker, ClientSpreadsOverWorkersSkipsDeadOnesAndKeepsOrder) {
  RewardWorker w1(echo_registry(), echo_worker()), w2(echo_registry(), echo_worker());
  ClientOptions o;
  o.shard_size = 5;
  RewardClient c({"127.0.0.1:" + std::to_string(w1.port()), "127.0.0.1:1", "127.0.0.1:" + std::to_string(w2.port())}, o);
  auto items = echo_items(103);
  auto res = c.score(items);
  ASSERT_EQ(res.size(), 103u);
  for (int i = 0; i < 103; ++i) EXPECT_EQ(res[i].reward, i);
  EXPECT_GT(c.retries(), 0);  // the dead address was tried and skipped
  // In process, through the same interface, the same answers.
  LocalScorer local(std::make_shared<EchoReward>(), 3);
  auto lr = local.score(items);
  for (int i = 0; i < 103; ++i) EXPECT_EQ(lr[i].reward, res[i].reward);
}

TEST(RewardWorker, AWorkerStoppedMidBatchLosesNothingAndCountsNothingTwice) {
  auto w1 = std::make_unique<RewardWorker>(echo_registry(), echo_worker(2));
  RewardWorker w2(echo_registry(), echo_worker(2));
  ClientOptions o;
  o.shard_size = 4;
  o.timeout_seconds = 5;
  RewardClient c({"127.0.0.1:" + std::to_string(w1->port()), "127.0.0.1:" + std::to_string(w2.port())}, o);
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    w1->shutdown();
  });
  auto res = c.score(echo_items(200, 2));
  stopper.join();
  ASSERT_EQ(res.size(), 200u);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(res[i].reward, i) << "item " << i;
  std::cout << "retried shards: " << c.retries() << "\n";
}

TEST(RewardWorker, NoWorkerAnswersIsALoudErrorNamingTheAddresses) {
  ClientOptions o;
  o.timeout_seconds = 2;
  RewardClient c({"127.0.0.1:1", "127.0.0.1:2"}, o);
  try {
    c.score(echo_items(3));
    FAIL();
  } catch (const grpo::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("127.0.0.1:1"), std::string::npos) << m;
    EXPECT_NE(m.find("127.0.0.1:2"), std::string::npos) << m;
    EXPECT_NE(m.find("items [0, 3)"), std::string::npos) << m;
  }
}

TEST(RewardWorker, DeadlinesExpireAndAreReported) {
  RewardWorker w(echo_registry(), echo_worker(1));
  ClientOptions o;
  o.timeout_seconds = 0.05;
  o.max_attempts = 2;
  RewardClient c({"127.0.0.1:" + std::to_string(w.port())}, o);
  try {
    c.score(echo_items(1, 500));
    FAIL();
  } catch (const grpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("DEADLINE_EXCEEDED"), std::string::npos) << e.what();
  }
}

TEST(RewardWorker, BadSpecIsRefusedNamingIt) {
  RewardWorker w(echo_registry(), echo_worker());
  ClientOptions o;
  o.spec = "echo,nope";
  RewardClient c({"127.0.0.1:" + std::to_string(w.port())}, o);
  try {
    c.score(echo_items(2));
    FAIL();
  } catch (const grpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'nope' is not served by this worker"), std::string::npos) << e.what();
  }
}

TEST(RewardWorker, ServesOnlyTheRewardsItWasStartedWith) {
  RewardWorker w(echo_registry(), echo_worker());  // started with "echo"
  for (std::string spec : {"code", "math", "echo,code_binary:0.5"}) {
    ClientOptions o;
    o.spec = spec;
    o.max_attempts = 1;
    RewardClient c({"127.0.0.1:" + std::to_string(w.port())}, o);
    try {
      c.score(echo_items(1));
      FAIL() << spec << " was served";
    } catch (const grpo::Error& e) {
      EXPECT_NE(std::string(e.what()).find("is not served by this worker (it serves: echo)"), std::string::npos) << e.what();
    }
  }
  ClientOptions o;
  o.spec = "echo:2";  // reweighting what it serves is fine
  RewardClient c({"127.0.0.1:" + std::to_string(w.port())}, o);
  EXPECT_EQ(c.score(echo_items(3))[2].reward, 4.0);
}

TEST(RewardWorker, FastRewardsNeverWaitBehindSlowOnes) {
  // One scoring thread per pool: a slow call (as code is) holds its thread until the gate opens;
  // a fast call sent meanwhile is answered while the slow one still waits.
  WorkerOptions wo = echo_worker(1);
  wo.default_spec = "echo,gated";
  RewardWorker w(echo_registry(), wo);
  const std::string addr = "127.0.0.1:" + std::to_string(w.port());
  ClientOptions slow_o;
  slow_o.spec = "gated";
  std::vector<RewardResult> slow_result;
  std::thread slow_call([&] { slow_result = RewardClient({addr}, slow_o).score(echo_items(1)); });
  {
    std::unique_lock<std::mutex> lk(gate().mu);
    gate().cv.wait(lk, [] { return gate().entered; });  // the slow call holds the slow pool's thread
  }
  ClientOptions fast_o;
  fast_o.spec = "echo";
  fast_o.timeout_seconds = 30;
  fast_o.max_attempts = 1;
  EXPECT_EQ(RewardClient({addr}, fast_o).score(echo_items(2))[1].reward, 1.0);  // answered, gate still shut
  {
    std::lock_guard<std::mutex> g(gate().mu);
    EXPECT_FALSE(gate().open);
    gate().open = true;
  }
  gate().cv.notify_all();
  slow_call.join();
  ASSERT_EQ(slow_result.size(), 1u);
  EXPECT_EQ(slow_result[0].reward, 7.0);
}

TEST(RewardWorker, RewardOptionsApplyToEveryCombinationItServes) {
  // The overlong penalty of a 20-character completion: 0 with the defaults (max_length 4096), -1
  // when the worker is started with max_length 10, also for a client that reweighs it.
  WorkerOptions wo;
  wo.threads = 1;
  wo.default_spec = "overlong";
  RewardWorker plain(default_registry(), wo);
  wo.reward_options = {{"overlong", {{"max_length", 10}, {"cache_length", 5}}}};
  RewardWorker tuned(default_registry(), wo);
  RewardItem item;
  item.completion = std::string(20, 'x');
  ClientOptions o;
  o.spec = "overlong:2";
  EXPECT_EQ(RewardClient({"127.0.0.1:" + std::to_string(plain.port())}, o).score({item})[0].reward, 0.0);
  EXPECT_EQ(RewardClient({"127.0.0.1:" + std::to_string(tuned.port())}, o).score({item})[0].reward, -2.0);
  wo.reward_options = {{"overlong", {{"max_length", 10}, {"cache_length", 50}}}};  // refused at start-up
  EXPECT_THROW(RewardWorker(default_registry(), wo), std::exception);
}

TEST(RewardWorker, DeeplyNestedMetadataIsThatItemsErrorAndTheWorkerLives) {
  RewardWorker w(echo_registry(), echo_worker());
  RewardClient c({"127.0.0.1:" + std::to_string(w.port())});
  // The client sends metadata as JSON text; build the hostile text directly as a raw item.
  std::vector<RewardItem> items = echo_items(2);
  json deep = json::array();
  json* cur = &deep;
  for (int i = 0; i < 2000; ++i) {  // within what nlohmann builds here, far past the limit
    cur->push_back(json::array());
    cur = &(*cur)[0];
  }
  items[1].metadata = {{"id", 1}, {"deep", deep}};
  auto res = c.score(items);
  EXPECT_EQ(res[0].reward, 0.0);
  EXPECT_TRUE(res[0].error.empty());
  EXPECT_NE(res[1].error.find("nested deeper than 512"), std::string::npos) << res[1].error;
  EXPECT_EQ(c.score(echo_items(2))[1].reward, 1.0);  // still serving
}

TEST(Json, DepthIsBoundedBeforeParsing) {
  std::string deep(300000, '['), closing(300000, ']');
  EXPECT_EQ(grpo::json_depth("{\"a\": [1, {\"b\": \"[[[[\"}]}"), 3);  // brackets in strings do not count
  EXPECT_GT(grpo::json_depth(deep + closing), 512);
  try {
    grpo::parse_json(deep + closing, "request 7");
    FAIL();
  } catch (const grpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("request 7: JSON nested deeper than 512 levels"), std::string::npos) << e.what();
  }
  EXPECT_EQ(grpo::parse_json("[[[1]]]", "x")[0][0][0], 1);
  EXPECT_THROW(grpo::parse_json("{", "x"), grpo::Error);
}

TEST(BuiltinRewards, RepetitionIsExactAndSmall) {
  // Against a plain set of n-gram vectors on random texts over a small vocabulary.
  std::mt19937 rng(3);
  const char* vocab[] = {"a", "B", "the", "cat", "sat", "A", "b"};
  for (int t = 0; t < 50; ++t) {
    std::string text;
    int words = 1 + rng() % 60;
    for (int i = 0; i < words; ++i) text += std::string(vocab[rng() % 7]) + (rng() % 3 ? " " : "\n\t ");
    for (int n : {1, 2, 3, 5}) {
      std::vector<std::string> ws;
      std::istringstream in(text);
      for (std::string w; in >> w;) {
        for (auto& ch : w) ch = (char)std::tolower((unsigned char)ch);
        ws.push_back(w);
      }
      double want = 0;
      if ((int)ws.size() >= n) {
        std::set<std::vector<std::string>> distinct;
        for (size_t i = 0; i + n <= ws.size(); ++i) distinct.insert({ws.begin() + i, ws.begin() + i + n});
        want = -(1.0 - (double)distinct.size() / (double)(ws.size() - n + 1));
      }
      EXPECT_DOUBLE_EQ(score("repetition", text, {{"ngram", n}}).reward, want) << text << " n=" << n;
    }
  }
  // Memory on a 16 MB completion, measured in a child process (peak RSS growth while scoring).
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  if (pid == 0) {
    std::string big;
    big.reserve(16 << 20);
    std::mt19937 r(1);
    while (big.size() < (16u << 20)) big += "word" + std::to_string(r() % 5000) + " ";
    rusage before{}, after{};
    getrusage(RUSAGE_SELF, &before);
    volatile double v = score("repetition", big).reward;
    (void)v;
    getrusage(RUSAGE_SELF, &after);
    double ratio = (double)(after.ru_maxrss - before.ru_maxrss) * 1024 / big.size();
    ssize_t unused = write(fds[1], &ratio, sizeof ratio);
    (void)unused;
    _exit(0);
  }
  double ratio = -1;
  ASSERT_EQ(read(fds[0], &ratio, sizeof ratio), (ssize_t)sizeof ratio);
  waitpid(pid, nullptr, 0);
  close(fds[0]);
  close(fds[1]);
  printf("repetition: peak memory while scoring = %.2fx the completion's size\n", ratio);
  EXPECT_LT(ratio, 4.0);
}

TEST(MathChecker, HostileInputsAreBoundedAndFast) {
  std::vector<std::pair<std::string, std::string>> cases = {
      {"\\boxed{" + std::string(100000, '{') + "1" + std::string(100000, '}') + "}", "1"},
      {"$" + std::string(50000, '(') + "1" + std::string(50000, ')') + "$", "1"},
      {"$2^{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}$", "4"},
      {"$9!!!!!!!!!!!!!!!!!!!!$", "1"},
      {"$" + [] { std::string s; for (int i = 0; i < 200; ++i) s += "1\\pm "; return s; }() + "1$", "1"},
      {std::string(10 << 20, 'x') + " the answer is 5", "5"},
      {"$" + [] { std::string s; for (int i = 0; i < 20000; ++i) s += "x+"; return s; }() + "1$", "x+1"},
      {"\\boxed{\\frac{\\frac{\\frac{\\frac{1}{2}}{3}}{4}}{5}" + std::string(1000, '}'), "1"},
  };
  for (auto& [pred, gold] : cases) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = score("math", pred, json::object(), gold);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(ms, 2000) << pred.substr(0, 60);
    (void)r;
  }
  // The 10 MB text still finds its answer at the end.
  EXPECT_EQ(score("math", std::string(10 << 20, 'x') + " the answer is 5", json::object(), "5").reward, 1.0);
}

TEST(RewardWorker, ATokenIsRequiredWhenSetAndOffLoopbackOneIsNeeded) {
  WorkerOptions wo = echo_worker();
  wo.security.token = "worker-token";
  RewardWorker w(echo_registry(), wo);
  const std::string address = "127.0.0.1:" + std::to_string(w.port());
  for (std::string token : {"", "worker-tokeN"}) {
    ClientOptions o;
    o.security.token = token;
    RewardClient c({address}, o);
    try {
      c.score(echo_items(2));
      FAIL() << "scored with token '" << token << "'";
    } catch (const grpo::Error& e) {
      EXPECT_NE(std::string(e.what()).find("missing or wrong bearer token"), std::string::npos) << e.what();
    }
  }
  ClientOptions o;
  o.security.token = "worker-token";
  RewardClient c({address}, o);
  EXPECT_EQ(c.score(echo_items(3))[2].reward, 2.0);
  WorkerOptions open = echo_worker();
  open.host = "0.0.0.0";
  try {
    RewardWorker exposed(echo_registry(), open);
    FAIL() << "listened on 0.0.0.0 with neither TLS nor a token";
  } catch (const grpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find("reward worker: refusing to listen on 0.0.0.0"), std::string::npos) << e.what();
  }
}

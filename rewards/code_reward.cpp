// The `code` and `code_binary` rewards: run the completion's last fenced code block against the
// item's tests inside the sandbox (sandbox/sandbox.h).
//
// Tests come from the item's metadata (or, when metadata has none, from a JSON reference):
//   HumanEval  {"test": "...def check(candidate)...", "entry_point": "f", "prompt": "def f(...):"}
//              one run of prompt-or-code + test + check(f); pass or fail
//   MBPP       {"test_list": ["assert ...", ...], "test_setup_code": "..."}: one run per assert
//   I/O        {"tests": [{"input": "...", "output": "..."}, ...]}: one run per case, outputs compared
//              line by line with trailing whitespace ignored (C++ is compiled once per item)
// reward = fraction of tests passed (`code`), or 1 when all pass (`code_binary`).
// Options: timeout_s (per test, 5), compile_timeout_s (60), memory_mb (512), concurrency (runs
// at once across all items of the process: a shared bound), language ("python" when the block has
// no tag).
#include <re2/re2.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>

#include "rewards/builtin.h"
#include "rewards/code_harness.h"
#include "sandbox/sandbox.h"
#include "util/json.h"

namespace grpo::rewards {

namespace {

using json = nlohmann::json;

// A counting semaphore shared by every code reward in the process.
class Slots {
 public:
  static Slots& get() {
    static Slots s;
    return s;
  }
  void set_limit(int n) {
    std::lock_guard<std::mutex> g(mu_);
    if (n > 0) limit_ = n;
  }
  void acquire() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return used_ < limit_; });
    ++used_;
  }
  void release() {
    {
      std::lock_guard<std::mutex> g(mu_);
      --used_;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int used_ = 0, limit_ = (int)std::max(1u, std::thread::hardware_concurrency());
};

struct SlotGuard {
  SlotGuard() { Slots::get().acquire(); }
  ~SlotGuard() { Slots::get().release(); }
};

struct Block {
  std::string lang, code;
};

Block last_code_block(const std::string& text, const std::string& default_lang) {
  static const RE2 fence("(?s)```([A-Za-z0-9+#]*)[^\\n]*\\n(.*?)```");
  re2::StringPiece in(text);
  std::string lang, code;
  Block b{default_lang, ""};
  bool found = false;
  while (RE2::FindAndConsume(&in, fence, &lang, &code)) {
    b.code = code;
    b.lang = lang.empty() ? default_lang : lang;
    found = true;
  }
  if (!found) b.code = text;  // no fence: the completion is the code
  for (auto& c : b.lang) c = (char)std::tolower((unsigned char)c);
  if (b.lang == "py" || b.lang == "python3") b.lang = "python";
  if (b.lang == "c++" || b.lang == "cc" || b.lang == "cxx") b.lang = "cpp";
  return b;
}

std::string strip_lines(const std::string& s) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= s.size()) {
    size_t nl = s.find('\n', start);
    std::string line = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r')) line.pop_back();
    lines.push_back(line);
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::string out;
  for (auto& l : lines) out += l + "\n";
  return out;
}

class CodeReward : public Reward {
 public:
  bool slow() const override { return true; }

  CodeReward(const json& o, bool binary) : binary_(binary) {
    limits_.timeout_s = o.value("timeout_s", 5.0);
    limits_.memory_mb = o.value("memory_mb", 512);
    compile_timeout_ = o.value("compile_timeout_s", 60.0);
    default_lang_ = o.value("language", std::string("python"));
    if (o.contains("concurrency")) Slots::get().set_limit(o["concurrency"].get<int>());
    sandbox::Options so;
    so.allow_weaker_isolation = o.value("allow_weaker_isolation", false);
    options_ = so;
  }

  RewardResult score(const RewardItem& item) const override {
    json tests = item.metadata;
    if (!tests.contains("test") && !tests.contains("test_list") && !tests.contains("tests") && !item.reference.empty()) {
      try {
        tests = parse_json(item.reference, "reference");
      } catch (const std::exception&) {
        throw std::invalid_argument("no tests: metadata has none and the reference is not a JSON test object");
      }
    }
    Block b = last_code_block(item.completion, default_lang_);
    int passed = 0, total = 0;
    std::string first_failure;
    std::string infra;  // a sandbox failure is the item's error, not a wrong answer
    auto note = [&](const sandbox::Result& r, const std::string& what) {
      if (r.status == sandbox::Status::SandboxError && infra.empty()) infra = "sandbox: " + r.error;
      if (first_failure.empty())
        first_failure = what + ": " + sandbox::to_string(r.status) + (r.err.empty() ? "" : ": " + r.err.substr(0, 300));
    };
    if (tests.contains("test") && tests.contains("entry_point")) {
      if (b.lang != "python") throw std::invalid_argument("HumanEval tests need Python code");
      std::string ep = tests["entry_point"].get<std::string>();
      std::string prompt = tests.value("prompt", item.prompt);
      bool defines = b.code.find("def " + ep) != std::string::npos;
      total = 1;
      auto r = harnessed(defines ? b.code : prompt + b.code, tests["test"].get<std::string>(), "", ep);
      passed = harness_passed(r);
      if (!passed) note(r.result, "check(" + ep + ")");
    } else if (tests.contains("test_list")) {
      if (b.lang != "python") throw std::invalid_argument("MBPP tests need Python code");
      std::string setup = tests.value("test_setup_code", std::string());
      for (const auto& t : tests["test_list"]) {
        ++total;
        // The setup code builds inputs from the solution's own classes (MBPP 367, 927): after the code.
        auto r = harnessed(b.code, t.get<std::string>(), setup, "");
        if (harness_passed(r)) ++passed;
        else note(r.result, t.get<std::string>());
      }
    } else if (tests.contains("tests")) {
      const auto& cases = tests["tests"];
      std::unique_ptr<sandbox::Workspace> ws;
      if (b.lang == "cpp") {
        ws = std::make_unique<sandbox::Workspace>();
        ws->write("main.cpp", b.code);
        sandbox::Limits cl = limits_;
        cl.timeout_s = compile_timeout_;
        cl.memory_mb = std::max<int64_t>(limits_.memory_mb, 2048);
        SlotGuard slot;
        auto c = sandbox::run({"g++", "-O2", "-std=c++17", "-o", "main", "main.cpp"}, "", cl, *ws, options_);
        if (c.status != sandbox::Status::Ok) {
          RewardResult r;
          r.components[binary_ ? "code_binary" : "code"] = 0;
          r.components["code/compile_error"] = 1;
          return r;
        }
      } else if (b.lang != "python") {
        throw std::invalid_argument("unsupported language '" + b.lang + "' (python, cpp)");
      }
      for (const auto& t : cases) {
        ++total;
        std::string in = t.value("input", std::string()), want = t.value("output", std::string());
        sandbox::Result r;
        if (ws) {
          SlotGuard slot;
          r = sandbox::run({"./main"}, in, limits_, *ws, options_);
        } else {
          r = python(b.code, in);
        }
        if (r.status == sandbox::Status::Ok && strip_lines(r.out) == strip_lines(want)) ++passed;
        else note(r, "case " + std::to_string(total));
      }
    } else {
      throw std::invalid_argument("no tests: expected metadata.test + entry_point, metadata.test_list or metadata.tests");
    }
    RewardResult res;
    double frac = total ? (double)passed / total : 0.0;
    res.reward = binary_ ? (passed == total && total > 0 ? 1.0 : 0.0) : frac;
    res.components[binary_ ? "code_binary" : "code"] = res.reward;
    res.components["code/passed"] = passed;
    res.components["code/tests"] = total;
    res.error = infra;
    static const bool debug = std::getenv("GRPO_CODE_DEBUG") != nullptr;
    if (debug && !first_failure.empty()) fprintf(stderr, "code reward: %s\n", first_failure.c_str());
    return res;
  }

 private:
  struct Harnessed {
    sandbox::Result result;
    std::string nonce;
  };
  // The completion under the test harness (rewards/code_harness.h): passed only when the harness
  // printed this run's nonce after the assertions.
  Harnessed harnessed(const std::string& solution, const std::string& test, const std::string& setup,
                      const std::string& entry_point) const {
    Harnessed h;
    static thread_local std::mt19937_64 rng(std::random_device{}());
    char buf[33];
    snprintf(buf, sizeof buf, "%016llx%016llx", (unsigned long long)rng(), (unsigned long long)rng());
    h.nonce = buf;
    SlotGuard slot;
    h.result = sandbox::run({"python3", "-I", "main.py"}, h.nonce + "\n",
                            {{"main.py", code_harness()}, {"solution.py", solution}, {"test.py", test},
                             {"setup.py", setup}, {"entry.txt", entry_point}},
                            limits_, options_);
    return h;
  }
  static bool harness_passed(const Harnessed& h) {
    return h.result.status == sandbox::Status::Ok && h.result.out.find("\n" + h.nonce + " PASSED\n") != std::string::npos;
  }

  sandbox::Result python(const std::string& program, const std::string& in) const {
    SlotGuard slot;
    return sandbox::run({"python3", "-I", "main.py"}, in, {{"main.py", program}}, limits_, options_);
  }

  bool binary_;
  sandbox::Limits limits_;
  double compile_timeout_ = 60;
  std::string default_lang_;
  sandbox::Options options_;
};

}  // namespace

void register_code_rewards(RewardRegistry& r) {
  r.add("code", [](const json& o) { return std::make_unique<CodeReward>(o, false); },
        "fraction of the item's tests the last code block passes, run in the sandbox");
  r.add("code_binary", [](const json& o) { return std::make_unique<CodeReward>(o, true); },
        "1 when the last code block passes all of the item's tests");
}

}  // namespace grpo::rewards

// Reward worker soak: one worker serving math + format + code, 64 concurrent clients keeping about
// 1000 calls in flight for a fixed time, a quarter of the code items hostile (an endless loop, a
// fork bomb, a memory hog, an output flood, closed stdio and a long sleep, an exit(0) that skips the
// tests) and some math items hostile (megabyte completions, deep nesting, huge powers). Prints per
// class: calls, items/s, p50/p99/max latency, item errors, failed calls and retries; then whether
// every hostile code item scored 0, the process's RSS before and after, and the latency of one
// plain call once the soak is over (the worker must still answer promptly).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "scripts/bench/process_stats.h"

#include "rewards/builtin.h"
#include "rewards/rpc.h"

using namespace grpo::rewards;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

RewardItem math_item(int i) {
  RewardItem it;
  it.completion = "<think>\nStep 1: " + std::to_string(i) + " + 4 = " + std::to_string(i + 4) +
                  "\n</think>\n<answer>\n$\\boxed{\\frac{" + std::to_string(2 * i + 8) + "}{2}}$\n</answer>";
  it.reference = std::to_string(i + 4);
  return it;
}

RewardItem hostile_math_item(int i) {
  RewardItem it;
  it.reference = "1";
  switch (i % 4) {
    case 0: it.completion = std::string(1 << 20, 'a') + "\\boxed{1}"; break;  // a megabyte of text
    case 1: {
      std::string s;
      for (int d = 0; d < 3000; ++d) s += "\\frac{";
      it.completion = "\\boxed{" + s + "}";  // deep, unbalanced nesting
      break;
    }
    case 2: it.completion = "\\boxed{10^{10^{10^{10}}}}"; break;  // a power no one should evaluate
    default: it.completion = "<think>" + std::string(100000, '<') + "</think><answer>\\boxed{" + std::string(5000, '(') + "}</answer>";
  }
  return it;
}

RewardItem code_item(const std::string& body) {
  RewardItem it;
  it.completion = "```python\n" + body + "\n```";
  it.metadata = {{"test_list", json::array({"assert double(2) == 4", "assert double(-3) == -6"})}};
  return it;
}

const char* kHostileCode[] = {
    "def double(x):\n    while True: pass",
    "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
    "x = bytearray(4 << 30)\ndef double(v): return 2 * v",
    "while True: print('x' * 100000)",
    "import os, time\nos.close(1); os.close(2)\ntime.sleep(100)",
    "import os\nos._exit(0)",
};

struct ClassStats {
  std::mutex mu;
  std::vector<double> latency_ms;
  int64_t items = 0, in_window = 0, item_errors = 0, failed_calls = 0, hostile_nonzero = 0, hostile = 0;
};

void print_row(const char* name, ClassStats& s, double seconds) {
  std::sort(s.latency_ms.begin(), s.latency_ms.end());
  auto pct = [&](double p) {
    return s.latency_ms.empty() ? 0.0 : s.latency_ms[std::min(s.latency_ms.size() - 1, size_t(p * s.latency_ms.size()))];
  };
  printf("| %s | %zu | %.1f | %.1f | %.1f | %.1f | %lld | %lld |\n", name, s.latency_ms.size(), s.in_window / seconds, pct(0.5),
         pct(0.99), s.latency_ms.empty() ? 0.0 : s.latency_ms.back(), (long long)s.item_errors, (long long)s.failed_calls);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"reward worker soak"};
  int threads = 16, clients = 64, in_flight = 16, code_clients = 8;  // 1024 calls in flight, 128 of them code
  double seconds = 60, code_timeout = 2;
  app.add_option("--threads", threads, "worker scoring threads")->capture_default_str();
  app.add_option("--clients", clients, "concurrent clients")->capture_default_str();
  app.add_option("--in-flight", in_flight, "calls each client keeps in flight")->capture_default_str();
  app.add_option("--code-clients", code_clients, "clients that send code items (the rest send math)")->capture_default_str();
  app.add_option("--seconds", seconds, "soak duration")->capture_default_str();
  app.add_option("--code-timeout", code_timeout, "seconds per code test (the code reward's timeout_s)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  WorkerOptions wo;
  wo.threads = threads;
  wo.default_spec = "math,format:0.2,code";
  wo.reward_options = {{"code", {{"timeout_s", code_timeout}, {"memory_mb", 256}}}};
  RewardWorker worker(default_registry(), wo);
  const std::string addr = "127.0.0.1:" + std::to_string(worker.port());
  const double rss_before = grpo::bench::rss_mb();
  printf("worker: %d scoring threads, %d clients x %d calls in flight (%d in all), %d of them code clients, %.0f s; "
         "code tests %.1f s each\n\n", threads, clients, in_flight, clients * in_flight, code_clients, seconds, code_timeout);

  ClassStats math, code;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> retries{0};
  // Each client is one channel shared by `in_flight` callers, each with one call in flight at a time.
  std::vector<std::unique_ptr<RewardClient>> channels;
  for (int c = 0; c < clients; ++c) {
    ClientOptions o;
    o.spec = c < code_clients ? "code" : "math,format:0.2";
    o.timeout_seconds = 300;
    o.max_attempts = 8;
    channels.push_back(std::make_unique<RewardClient>(std::vector<std::string>{addr}, o));
  }
  std::vector<std::thread> ts;
  for (int c = 0; c < clients; ++c)
    for (int f = 0; f < in_flight; ++f)
      ts.emplace_back([&, c, f] {
        const bool is_code = c < code_clients;
        ClassStats& st = is_code ? code : math;
        for (int round = 0; !stop; ++round) {
          const int k = round * in_flight + f + c;
          const bool bad = is_code ? (k % 4 == 0) : (k % 16 == 0);
          RewardItem item = is_code ? code_item(bad ? kHostileCode[(k / 4) % 6] : "def double(x):\n    return 2 * x")
                                    : bad ? hostile_math_item(k / 16) : math_item(k);
          auto t0 = Clock::now();
          try {
            auto res = channels[c]->score({item});
            const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
            std::lock_guard<std::mutex> g(st.mu);
            st.latency_ms.push_back(ms);
            ++st.items;
            if (!stop) ++st.in_window;  // finished within the soak's duration (throughput)
            if (!res[0].error.empty()) ++st.item_errors;
            if (bad) {
              ++st.hostile;
              if (is_code && res[0].reward != 0) ++st.hostile_nonzero;
            }
          } catch (const std::exception& e) {
            std::lock_guard<std::mutex> g(st.mu);
            ++st.failed_calls;
            if (st.failed_calls <= 3) fprintf(stderr, "call failed: %s\n", e.what());
          }
        }
      });
  auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& t : ts) t.join();  // the calls in flight finish (counted in latency, not in throughput)
  const double drain = std::chrono::duration<double>(Clock::now() - t0).count() - sec;

  printf("| class | calls | items/s | p50 latency (ms) | p99 latency (ms) | max (ms) | item errors | failed calls |\n");
  printf("|---|---|---|---|---|---|---|---|\n");
  print_row("math + format", math, sec);
  print_row("code", code, sec);
  for (auto& ch : channels) retries += ch->retries();
  printf("\nitems/s: finished within the %.0f s; latency: every call, including the %.1f s it took the calls "
         "in flight at the end to finish\n", sec, drain);
  printf("\nretried calls (queue full or deadline): %lld\n", (long long)retries.load());
  printf("hostile code items: %lld, scored above 0: %lld\n", (long long)code.hostile, (long long)code.hostile_nonzero);
  printf("hostile math items: %lld (all answered: %s)\n", (long long)math.hostile, math.failed_calls == 0 ? "yes" : "no");

  // After the soak: one plain call, timed.
  ClientOptions o;
  o.spec = "math,format:0.2";
  RewardClient after({addr}, o);
  auto a0 = Clock::now();
  auto r = after.score({math_item(7)});
  printf("one call after the soak: %.1f ms, reward %.2f\n",
         std::chrono::duration<double, std::milli>(Clock::now() - a0).count(), r[0].reward);
  printf("process RSS: %.0f MB before, %.0f MB after\n", rss_before, grpo::bench::rss_mb());
  worker.shutdown();
  return code.hostile_nonzero == 0 && math.failed_calls == 0 && code.failed_calls == 0 ? 0 : 1;
}

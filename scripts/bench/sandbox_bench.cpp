// Sandbox throughput: executions/s of `python3 -c pass` through the sandbox on all cores, and
// the same program started bare (fork + exec, no isolation) in the same run as the baseline.
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "sandbox/sandbox.h"

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <typename F>
double rate(int threads, int total, F&& one) {
  std::atomic<int> next{0};
  double t0 = now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      while (next++ < total) one();
    });
  for (auto& t : ts) t.join();
  return total / (now() - t0);
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sandbox benchmark"};
  int threads = (int)std::max(1u, std::thread::hardware_concurrency()), runs = 400;
  app.add_option("--threads", threads);
  app.add_option("--runs", runs);
  CLI11_PARSE(app, argc, argv);
  printf("%s\n\n", grpo::sandbox::probe().summary().c_str());
  // The baseline runs the interpreter the sandbox finds (first python3 on its PATH), with the
  // sandbox's clean environment.
  static const char* py = access("/usr/local/bin/python3", X_OK) == 0 ? "/usr/local/bin/python3" : "/usr/bin/python3";
  auto bare = [] {
    pid_t pid = fork();
    if (pid == 0) {
      const char* envp[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8", nullptr};
      execle(py, "python3", "-c", "pass", (char*)nullptr, envp);
      _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
  };
  std::atomic<int> bad{0};
  auto boxed = [&] {
    grpo::sandbox::Workspace ws;
    auto r = grpo::sandbox::run({"python3", "-c", "pass"}, "", grpo::sandbox::Limits{}, ws);
    if (r.status != grpo::sandbox::Status::Ok && bad++ < 3) fprintf(stderr, "failed run: %s\n", grpo::sandbox::to_json(r).c_str());
  };
  bare();
  boxed();
  printf("| program | threads | executions/s | ms per execution (one thread) |\n|---|---|---|---|\n");
  double b1 = rate(1, runs / 4, bare), s1 = rate(1, runs / 4, boxed);
  double bt = rate(threads, runs, bare), st = rate(threads, runs, boxed);
  printf("| bare python3 -c pass | 1 | %.0f | %.2f |\n", b1, 1000 / b1);
  printf("| sandboxed python3 -c pass | 1 | %.0f | %.2f |\n", s1, 1000 / s1);
  printf("| bare python3 -c pass | %d | %.0f | |\n", threads, bt);
  printf("| sandboxed python3 -c pass | %d | %.0f | |\n", threads, st);
  printf("\nsandbox overhead per run: %.2f ms (one thread); failed runs: %d\n", 1000 / s1 - 1000 / b1, bad.load());
  return bad ? 1 : 0;
}

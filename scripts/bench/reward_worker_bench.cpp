// Reward worker throughput over loopback gRPC: a worker serving the math+format reward, and 1, 8
// and 64 concurrent clients each sending batches of realistic R1-style completions. Prints a
// markdown table of items/s and per-call latency (p50, p99).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "rewards/builtin.h"
#include "rewards/rpc.h"

using namespace grpo::rewards;

int main(int argc, char** argv) {
  CLI::App app{"reward worker benchmark"};
  int threads = (int)std::max(1u, std::thread::hardware_concurrency());
  int batch = 16;
  double seconds = 3;
  std::string clients_list = "1,8,64";
  app.add_option("--threads", threads, "worker scoring threads");
  app.add_option("--batch", batch, "items per call");
  app.add_option("--seconds", seconds, "per client count");
  app.add_option("--clients", clients_list);
  CLI11_PARSE(app, argc, argv);

  WorkerOptions wo;
  wo.threads = threads;
  wo.default_spec = "math,format:0.2";
  RewardWorker worker(default_registry(), wo);
  const std::string addr = "127.0.0.1:" + std::to_string(worker.port());

  std::vector<RewardItem> items;
  for (int i = 0; i < batch; ++i) {
    RewardItem it;
    std::string steps;
    for (int s = 0; s < 8; ++s) steps += "Step " + std::to_string(s) + ": we have $" + std::to_string(3 * s + i) + " + 4 = " + std::to_string(3 * s + i + 4) + "$.\n";
    it.completion = "<think>\n" + steps + "</think>\n<answer>\nThe answer is $\\boxed{\\frac{" + std::to_string(2 * i + 2) + "}{4}}$\n</answer>";
    it.reference = (i % 2) ? "\\frac{" + std::to_string(i + 1) + "}{2}" : std::to_string(i);
    items.push_back(it);
  }
  printf("worker: %d scoring threads, batches of %d items (math + format), loopback gRPC\n\n", threads, batch);
  printf("| clients | items/s | calls/s | p50 latency (ms) | p99 latency (ms) |\n|---|---|---|---|---|\n");
  std::stringstream ss(clients_list);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    const int C = std::stoi(tok);
    std::atomic<bool> stop{false};
    std::vector<std::vector<double>> lat(C);
    std::vector<std::thread> ts;
    for (int c = 0; c < C; ++c)
      ts.emplace_back([&, c] {
        ClientOptions o;
        o.shard_size = batch;
        o.max_in_flight = 1;
        RewardClient client({addr}, o);
        while (!stop) {
          auto t0 = std::chrono::steady_clock::now();
          auto r = client.score(items);
          lat[c].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
          if (r.size() != items.size()) std::abort();
        }
      });
    auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
    for (auto& t : ts) t.join();
    double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::vector<double> all;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    std::sort(all.begin(), all.end());
    auto pct = [&](double p) { return all.empty() ? 0.0 : all[std::min(all.size() - 1, (size_t)(p * all.size()))]; };
    printf("| %d | %.0f | %.0f | %.2f | %.2f |\n", C, all.size() * batch / sec, all.size() / sec, pct(0.5), pct(0.99));
    fflush(stdout);
  }
  worker.shutdown();
  return 0;
}

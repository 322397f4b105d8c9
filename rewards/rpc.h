// Scoring a batch: in process (LocalScorer) or over gRPC (RewardClient against reward workers,
// RewardWorker serving RewardService). Torch-free; no generated protobuf headers here.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rewards/reward.h"
#include "rpc/security.h"

namespace grpo::rewards {

// What the trainer calls: scores in input order, one result per item, or throws grpo::Error.
class Scorer {
 public:
  virtual ~Scorer() = default;
  virtual std::vector<RewardResult> score(const std::vector<RewardItem>& items) = 0;
};

class LocalScorer : public Scorer {
 public:
  LocalScorer(std::shared_ptr<const Reward> reward, int threads = 1);
  std::vector<RewardResult> score(const std::vector<RewardItem>& items) override;

 private:
  std::shared_ptr<const Reward> reward_;
  int threads_;
};

struct ClientOptions {
  std::string spec;                // "" = each worker's default combination
  size_t shard_size = 64;          // items per call
  double timeout_seconds = 60;     // deadline of each call
  int max_attempts = 4;            // per shard, each on the next worker in turn
  int max_in_flight = 0;           // concurrent calls; 0 = 2 per worker
  rpc::Security security;          // tls_ca and/or token, as the workers require
  // Told each failed or timed-out call before its shard is retried on the next worker (from the
  // scoring threads: must be thread-safe).
  std::function<void(const std::string& what)> on_retry;
};

// Spreads a batch over several workers: shards go round-robin, a shard whose call fails or times
// out is sent to the next worker, results land by index (never dropped, never counted twice).
// When a shard fails everywhere, score() throws naming every address and error it met.
class RewardClient : public Scorer {
 public:
  RewardClient(std::vector<std::string> addresses, ClientOptions options = {});
  ~RewardClient() override;
  std::vector<RewardResult> score(const std::vector<RewardItem>& items) override;
  int64_t retries() const;  // shard attempts that failed and were retried elsewhere

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct WorkerOptions {
  std::string host = "127.0.0.1";
  int port = 0;                    // 0 = any free port
  // Scoring threads and queue bound of each of two pools: calls that use a slow reward (code) and
  // calls that do not, so that fast rewards never wait behind programs.
  int threads = 4;
  size_t max_queue = 1024;         // calls waiting for a thread; beyond: RESOURCE_EXHAUSTED
  std::string default_spec = "math";  // the rewards this worker serves (clients may reweigh them)
  nlohmann::json reward_options = nlohmann::json::object();  // per reward: {"code": {"timeout_s": 2}}
  rpc::Security security;              // TLS and/or a bearer token; required off loopback unless insecure
};

// Serves RewardService (and Health) with gRPC's callback API: calls are handed to a bounded
// thread pool; each item is scored inside a try, so a failing reward is that item's error.
class RewardWorker {
 public:
  RewardWorker(const RewardRegistry& registry, WorkerOptions options);
  ~RewardWorker();
  int port() const;
  void wait();
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace grpo::rewards

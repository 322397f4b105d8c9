// The rollout server and its client, in plain C++ types. Torch-free and free of generated
// protobuf headers, so that torch code (the CLI, the trainer) can include it (build rule 1).
//
// A server wraps a Backend (rollout/service.h implements one over the engine) and serves
// RolloutService and Health from proto/grpo.proto. Several Generate calls may run at once: their
// prompts join the same continuous batch.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rollout/types.h"
#include "rpc/security.h"

namespace grpo::rollout {

struct PromptInput {
  int64_t prompt_index = 0;
  bool is_text = false;  // text: tokenized by the backend's tokenizer; otherwise `ids`
  std::string text;
  std::vector<int64_t> ids;
};

struct ServerInfo {
  std::string model_dir, model_type, device, dtype;
  int64_t vocab_size = 0, max_context = 0, weight_version = 0, max_batch = 0, kv_cache_blocks = 0, block_size = 0;
  int64_t running = 0, waiting = 0, eos_token_id = -1;
  bool has_tokenizer = false;
};

// Called with each completion and the prompt ids the model saw. Returns false to stop early.
using CompletionSink = std::function<bool(const Completion&, const std::vector<int64_t>& prompt_ids)>;

class Backend {
 public:
  virtual ~Backend() = default;
  // Generates params.n completions for every prompt and hands each to `emit` on the calling
  // thread as it finishes. Unless `ignore_eos`, the model's eos_token_id is a stop token.
  // Throws grpo::Error naming the first bad prompt ("prompt 3: empty prompt") before any work.
  // When `cancelled` says so (the caller went away), generation of these prompts stops and their
  // sequences are freed.
  virtual void generate(const std::vector<PromptInput>& prompts, const SamplingParams& params, bool ignore_eos,
                        const CompletionSink& emit, const std::function<bool()>& cancelled = {}) = 0;
  // Waits for running sequences to finish, loads the checkpoint's weights into the policy, and
  // stamps later completions with `version`. Returns the seconds it took.
  virtual double update_weights(const std::string& checkpoint_dir, int64_t version) = 0;
  virtual ServerInfo info() = 0;
};

// What one Generate call may ask for; beyond: RESOURCE_EXHAUSTED naming the limit.
struct ServerLimits {
  int64_t max_samples = 1024;           // n per prompt
  int64_t max_prompts = 4096;           // prompts per call
  int64_t max_total_samples = 65536;    // prompts x n per call
  int64_t max_new_tokens = 0;           // per completion; 0 = the model's context
  int64_t max_prompt_bytes = 1 << 20;   // text of one prompt
};

struct RolloutServerOptions {
  ServerLimits limits;
  rpc::Security security;  // TLS and/or a bearer token; required off loopback unless insecure
};

class RolloutServer {
 public:
  // Serves `backend` on host:port (port 0 picks a free port) from background threads.
  RolloutServer(Backend& backend, const std::string& host, int port, RolloutServerOptions options = {});
  ~RolloutServer();
  int port() const;
  void wait();      // blocks until shutdown()
  void shutdown();  // stops accepting calls; running calls are cancelled

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A Backend served by a remote `grpo rollout-server`. Every call carries a deadline.
class RolloutClient : public Backend {
 public:
  explicit RolloutClient(const std::string& address, double generate_timeout_seconds = 3600,
                         double call_timeout_seconds = 30, rpc::Security security = {});
  ~RolloutClient() override;
  void generate(const std::vector<PromptInput>& prompts, const SamplingParams& params, bool ignore_eos,
                const CompletionSink& emit, const std::function<bool()>& cancelled = {}) override;
  double update_weights(const std::string& checkpoint_dir, int64_t version) override;
  ServerInfo info() override;
  const std::string& address() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace grpo::rollout

// Subcommands of the `grpo` program. Each returns the process exit code and reports failures
// by throwing grpo::Error, which main() prints as one line `grpo: error: <what and where>`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rpc/security.h"

namespace grpo::cli {

// TLS and token flags of a server (cert, key, token file, insecure) or a client (CA, token file).
struct SecurityArgs {
  std::string tls_cert, tls_key, tls_ca, token_file;
  bool insecure = false;
};
inline rpc::Security to_security(const SecurityArgs& a) {
  rpc::Security s;
  s.tls_cert = a.tls_cert;
  s.tls_key = a.tls_key;
  s.tls_ca = a.tls_ca;
  s.insecure = a.insecure;
  if (!a.token_file.empty()) s.token = rpc::read_token_file(a.token_file);
  return s;
}

struct InitArgs {
  std::string config, output, dtype = "float32";
  uint64_t seed = 0;
};
int run_init(const InitArgs& args);

struct LaunchArgs {
  int nproc_per_node = 1, nnodes = 1, node_rank = 0, master_port = 29500;
  std::string master_addr = "127.0.0.1";
  double grace_seconds = 10;
  std::vector<std::string> command;
};
int run_launch(const LaunchArgs& args);

struct MergeAdapterArgs {
  std::string adapter, output, dtype = "float32";
};
int run_merge_adapter(const MergeAdapterArgs& args);

struct LogprobsArgs {
  std::string model, input, output, dtype = "float32", device = "cpu";
  int64_t batch_tokens = 16384;  // padded tokens per forward batch
  bool mtp = false;  // also each MTP module's log-probs of the completion tokens it predicts
};
int run_logprobs(const LogprobsArgs& args);

struct TokenizeArgs {
  std::string tokenizer, input;
  bool no_special_tokens = false;
  bool decode = false;  // input lines are ids; print text
  bool jsonl = false;   // input lines are JSON strings (texts may then hold newlines)
};
int run_tokenize(const TokenizeArgs& args);

struct ChatTemplateArgs {
  std::string model, input, output;
  bool add_generation_prompt = false;
  bool text = false;  // print the rendered text as is instead of one JSON string per line
};
int run_chat_template(const ChatTemplateArgs& args);

struct GenerateArgs {
  std::string model, prompts, output, server, dtype = "float32", device = "cpu";
  int64_t n = 1, top_k = 0, max_new_tokens = 256;
  double temperature = 1.0, top_p = 1.0, timeout = 3600;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  std::vector<int64_t> stop_token_ids;
  bool ignore_eos = false;
  int64_t max_batch = 256, block_size = 16, kv_cache_mb = 0;
  bool speculative_mtp = false;
  int64_t num_speculative_tokens = 1;
  bool fp8 = false;
  SecurityArgs security;  // with --server
};
int run_generate(const GenerateArgs& args);

struct ServeArgs {
  std::string model, host = "127.0.0.1", dtype = "float32", device = "cpu", port_file;
  int port = 50061;
  int64_t max_batch = 256, block_size = 16, kv_cache_mb = 0;
  bool speculative_mtp = false;
  int64_t num_speculative_tokens = 1;
  bool fp8 = false;
  int64_t max_samples = 1024, max_prompts = 4096, max_total_samples = 65536, max_new_tokens = 0,
          max_prompt_bytes = 1 << 20;
  SecurityArgs security;
};
int run_rollout_server(const ServeArgs& args);

struct RewardArgs {
  std::string name = "math", input, output, workers, options;
  std::vector<std::string> plugins;
  int threads = 1;
  double timeout = 60;
  SecurityArgs security;  // with --workers
};
int run_reward(const RewardArgs& args);

struct RewardWorkerArgs {
  std::string host = "127.0.0.1", rewards = "math", port_file, options;
  std::string reward_model, reward_model_device = "cpu";  // serve a trained reward model as `reward_model`
  bool rewards_given = false;
  std::vector<std::string> plugins;
  int port = 50051, threads = 4;
  SecurityArgs security;
};
int run_reward_worker(const RewardWorkerArgs& args);

struct EvalArgs {
  std::string model, benchmark, data_dir = "data", prompt_format = "r1", output, samples_output, server;
  std::string dtype = "float32", device = "cpu";
  int64_t n = 1, k = 1, max_new_tokens = 512, limit = 0, kv_cache_mb = 1024;
  double temperature = 0.0, top_p = 1.0;
  uint64_t seed = 0;
  int threads = 4;
  SecurityArgs security;  // with --server
};
int run_eval(const EvalArgs& args);

struct TrainArgs {
  std::string recipe, output;
  std::vector<std::string> overrides;
  bool resume = false;
};
int run_train(const TrainArgs& args);

}  // namespace grpo::cli

// Plain data of the rollout engine's contract: what a caller asks for and what it gets back.
// Torch-free and protobuf-free, so that the engine (torch) and the server (gRPC) both use it
// without meeting each other (build rule 1 in CMakeLists.txt).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace grpo::rollout {

struct SamplingParams {
  int64_t n = 1;                 // completions per prompt (GRPO's G)
  double temperature = 1.0;      // 0 = greedy
  double top_p = 1.0;            // nucleus mass kept, in (0, 1]
  int64_t top_k = 0;             // 0 = no top-k filter
  int64_t max_new_tokens = 256;  // cut with finish reason "length"
  std::vector<int64_t> stop_token_ids;  // kept as the last token of the completion
  std::vector<std::string> stop_strings;  // the completion ends with the token that completes one
  uint64_t seed = 0;
};

enum class FinishReason { Stop, Length };
inline const char* to_string(FinishReason r) { return r == FinishReason::Stop ? "stop" : "length"; }

struct Request {
  int64_t prompt_index = 0;  // the caller's index; carried into each completion and the random streams
  std::vector<int64_t> prompt_ids;
  SamplingParams params;
};

struct Completion {
  uint64_t request_id = 0;   // what Engine::add returned for the request
  int64_t prompt_index = 0;
  int64_t sample_index = 0;  // 0 .. n-1
  std::vector<int64_t> token_ids;
  // log p(token_ids[j] | prompt, token_ids[<j]) under the policy (softmax of the raw logits:
  // before temperature and filtering), the trainer's pi_old.
  std::vector<float> logprobs;
  std::string text;  // decoded completion (a trailing stop token id is not decoded); "" without a tokenizer
  FinishReason finish_reason = FinishReason::Length;
  int64_t weight_version = 0;
  // With EngineOptions::record_routing: the experts that served each token the model read, i.e.
  // prompt + token_ids[:-1], (tokens x MoE layers x top-k), token-major; what routing replay imposes
  // on the training forward (CausalLM::CompletionOptions::replay_experts). Empty otherwise.
  std::vector<int16_t> routed_experts;
};

}  // namespace grpo::rollout

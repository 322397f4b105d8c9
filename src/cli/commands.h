// Subcommands of the `grpo` program. Each returns the process exit code and reports failures
// by throwing grpo::Error, which main() prints as one line `grpo: error: <what and where>`.
#pragma once

#include <cstdint>
#include <string>

namespace grpo::cli {

struct InitArgs {
  std::string config, output, dtype = "float32";
  uint64_t seed = 0;
};
int run_init(const InitArgs& args);

struct LogprobsArgs {
  std::string model, input, output, dtype = "float32", device = "cpu";
  int64_t batch_tokens = 16384;  // padded tokens per forward batch
};
int run_logprobs(const LogprobsArgs& args);

struct TokenizeArgs {
  std::string tokenizer, input;
  bool no_special_tokens = false;
  bool decode = false;  // input lines are ids; print text
  bool jsonl = false;   // input lines are JSON strings (texts may then hold newlines)
};
int run_tokenize(const TokenizeArgs& args);

}  // namespace grpo::cli

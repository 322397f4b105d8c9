// A Backend (rollout/rpc.h) over the engine: one worker thread owns the engine and runs the
// continuous batch; Generate calls from any thread add their prompts to it and receive their
// completions as they finish. Used by `grpo rollout-server` and by local `grpo generate`.
#pragma once

#include <memory>
#include <string>

#include "model/checkpoint.h"
#include "rollout/engine.h"
#include "rollout/rpc.h"

namespace grpo::text {
class Tokenizer;
}

namespace grpo::rollout {

class EngineBackend : public Backend {
 public:
  // `tokenizer` may be null (then prompts must be token ids and stop strings are refused).
  EngineBackend(std::shared_ptr<model::CausalLM> model, std::shared_ptr<const text::Tokenizer> tokenizer,
                EngineOptions options, std::string model_dir = "");
  ~EngineBackend() override;

  void generate(const std::vector<PromptInput>& prompts, const SamplingParams& params, bool ignore_eos,
                const CompletionSink& emit, const std::function<bool()>& cancelled = {}) override;
  double update_weights(const std::string& checkpoint_dir, int64_t version) override;
  ServerInfo info() override;
  EngineStats stats();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};


// Loads tokenizer.json from a model directory when it has one; null otherwise.
std::shared_ptr<const text::Tokenizer> load_tokenizer_if_present(const std::string& model_dir);

}  // namespace grpo::rollout

// The state of a run on disk. A checkpoint OUT/NAME is a complete Hugging Face directory (config,
// weights, tokenizer.json, tokenizer_config.json, generation_config.json) plus what resuming needs
// (optimizer moments, RNG states, the refreshed reference, trainer_state.json). It is written
// whole to NAME.tmp and renamed into place; OUT/latest names the newest; at most save_total_limit
// checkpoint-N directories with N > 0 are kept (checkpoint-0, the policy after the warm start, stays).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "trainer/recipe.h"

namespace grpo::trainer {

struct RunState {
  int64_t step = 0;              // GRPO steps done
  int64_t position = 0;          // training prompts drawn so far (see PromptOrder)
  int64_t num_tokens = 0;        // prompt + completion tokens trained on so far
  bool warm_start_done = false;
  int64_t warm_start_step = 0;   // supervised steps done, while !warm_start_done
  std::string warm_start_rng;    // the warm start's example-draw generator, while !warm_start_done
};

nlohmann::json to_json(const RunState& state);
// Reads trainer_state.json; errors name the file and the field.
RunState read_run_state(const std::string& path);

class CheckpointStore {
 public:
  CheckpointStore(std::string out_dir, int64_t total_limit);

  // Writes checkpoint `name`: `write(dir)` fills a fresh directory (staging_dir(name)), which then
  // replaces OUT/name.
  void save(const std::string& name, const std::function<void(const std::string& dir)>& write);
  std::string staging_dir(const std::string& name) const { return out_ + "/" + name + ".tmp"; }
  // The newest complete checkpoint directory, or "" when there is none.
  std::string latest() const;
  // latest() for `--resume`; with none yet, says so on stderr (the run starts from the beginning).
  std::string resume_point() const;

 private:
  void prune(const std::string& keep);
  std::string out_;
  int64_t total_limit_;
};

// The tokenizer and generation files of a checkpoint, from the policy's source: the built-in
// byte-level tokenizer written out as a real tokenizer.json, or the base's files (its
// tokenizer_config.json keeps its chat template).
struct HubFiles {
  std::string tokenizer_json;
  nlohmann::json tokenizer_config, generation_config;
  nlohmann::json special_tokens_map;  // null when the base has none
  std::string chat_template;          // chat_template.jinja ("" when the base has none beside its config)
};
HubFiles hub_files(const ModelSettings& model, int64_t bos_token_id, int64_t eos_token_id,
                   const std::string& bos_token, const std::string& eos_token, int64_t max_length);
void write_hub_files(const HubFiles& files, const std::string& dir);

}  // namespace grpo::trainer

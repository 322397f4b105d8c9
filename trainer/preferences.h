// Preference pairs for a reward_model stage: a prompt with a preferred ("chosen") and a rejected
// completion, from JSONL (TRL's prompt/chosen/rejected columns) or built from the addition task (the
// worked solution against a wrong sum, a bare answer without the reasoning format, or rambling).
#pragma once

#include <string>
#include <vector>

#include "trainer/dataset.h"

namespace grpo::trainer {

struct PreferencePair {
  Example prompt;  // prompt, metadata, where
  std::string chosen, rejected;
};

struct PreferenceData {
  std::vector<PreferencePair> train, eval;
};

// Held-out pairs: eval_file's, or, without one, a seeded tenth of the training file's (at least one
// pair when there are ten or more). Rows without the three fields are skipped with a warning naming
// them; a file with no usable row is an error.
PreferenceData load_preferences(const DataSettings& data, const std::string& recipe_path);

}  // namespace grpo::trainer

// Training and evaluation data: prompts with their reference answers, from JSONL files (a row's
// other columns travel to the rewards as metadata) or the built-in addition task; the prompt
// template; and the order in which training prompts are drawn.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainer/recipe.h"

namespace grpo::trainer {

struct Example {
  std::string prompt, answer;
  nlohmann::json metadata = nlohmann::json::object();  // the row's other columns
  std::string where;                                   // file:line, or "built-in" for the addition task
  std::string completion;  // what an sft stage learns when it differs from the answer (worked solutions)
  // A conversation (OpenAI/TRL messages) when the row gives one: a prompt field holding a list of
  // messages, or, for sft, a messages field holding the whole conversation. Null otherwise.
  nlohmann::ordered_json messages;
};

// A worked solution of a+b in the R1 format: column sums from the right, then the answer:
// "<think>\n7+4=11, write 1 carry 1\n2+9+1=12, write 12\n</think>\n<answer>\n121\n</answer>".
// With `check`, the thought ends by verifying the sum: "...write 12\ncheck: 121-94=27\n</think>...".
std::string addition_solution(int64_t a, int64_t b, bool check = false);

struct Dataset {
  std::vector<Example> train, eval;
};

// The stage's data. Built-in addition keeps its eval problems out of the training set. JSONL rows
// that lack the prompt or answer field are skipped with one warning naming the first ten (file:line);
// a file with no usable row is an error.
Dataset load_dataset(const DataSettings& data, const std::string& recipe_path);

// Drops the examples whose prompt, as the model sees it (`length` in tokens), leaves no room for a
// single new token in `context`; returns one line naming them (file:line, tokens), "" if none.
std::string drop_prompts_past_context(std::vector<Example>& examples, int64_t context,
                                      const std::function<int64_t(const Example&)>& length);

// The prompt as the model sees it: the template with {prompt} replaced ("r1_zero": DeepSeek-R1-Zero's).
std::string apply_template(const DataSettings& data, const std::string& prompt);

// Which training example comes at each position of the run (positions count every prompt drawn).
// Epoch e = position / size visits every example once, in a permutation seeded by (seed, e), or
// in file order without shuffling. A position alone determines the example, so a resumed run
// draws exactly what an uninterrupted one would.
class PromptOrder {
 public:
  PromptOrder(size_t size, bool shuffle, uint64_t seed);
  size_t at(int64_t position);

 private:
  size_t size_;
  bool shuffle_;
  uint64_t seed_;
  int64_t epoch_ = -1;
  std::vector<size_t> permutation_;
};

}  // namespace grpo::trainer

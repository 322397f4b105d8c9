// What the model is given for an example, and what an sft stage trains it to produce. With
// prompt_format "template" (the default) the prompt is the prompt template filled in and encoded
// with the tokenizer's special tokens (BOS). With "chat", the filled-in prompt becomes a user
// message (after the recipe's system_prompt, if any), or a row's own conversation is used, and the
// model's chat template renders it with the generation prompt; the rendering already holds the BOS
// text, so no special tokens are added (as transformers' apply_chat_template(tokenize=True)).
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/dataset.h"
#include "trainer/packing.h"
#include "trainer/policy.h"

namespace grpo::trainer {

class PromptFormat {
 public:
  PromptFormat(const DataSettings& data, const Policy& policy) : data_(data), policy_(policy) {}

  bool chat() const { return policy_.chat != nullptr; }
  // The conversation the model answers (chat only): the row's messages without a final assistant
  // reply, or the system prompt and the filled-in prompt.
  nlohmann::ordered_json prompt_messages(const Example& ex) const;
  std::string prompt_text(const Example& ex) const;
  std::vector<int64_t> prompt_ids(const Example& ex) const;

  // An sft example: the prompt untrained, then the completion (or, without one, the answer) and
  // eos trained. With chat, every assistant turn of a conversation the template renders
  // incrementally is trained (text::training_text); the pieces are encoded one by one.
  SftSequence sft_sequence(const Example& ex) const;
  // True once an sft_sequence trained the final reply only (a template that rewrites earlier turns).
  bool final_turn_only() const { return final_turn_only_; }

 private:
  const DataSettings& data_;
  const Policy& policy_;
  mutable bool final_turn_only_ = false;
};

}  // namespace grpo::trainer

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
  PromptFormat(const DataSettings& data, std::shared_ptr<const text::Tokenizer> tok,
               std::shared_ptr<const text::ChatTemplate> chat, int64_t eos)
      : data_(data), tok_(std::move(tok)), chat_(std::move(chat)), eos_(eos) {}
  PromptFormat(const DataSettings& data, const Policy& policy) : PromptFormat(data, policy.tok, policy.chat, policy.eos) {}

  bool chat() const { return chat_ != nullptr; }
  // The conversation the model answers (chat only): the row's messages without a final assistant
  // reply, or the system prompt and the filled-in prompt.
  nlohmann::ordered_json prompt_messages(const Example& ex) const;
  std::string prompt_text(const Example& ex) const;
  std::vector<int64_t> prompt_ids(const Example& ex) const;
  // Text after the prompt (a completion), without special tokens.
  std::vector<int64_t> encode_text(const std::string& text) const { return encode(text, false); }

  // An sft example: the prompt untrained, then the completion (or, without one, the answer) and
  // eos trained. With chat, every assistant turn of a conversation the template renders
  // incrementally is trained (text::training_text); the pieces are encoded one by one.
  SftSequence sft_sequence(const Example& ex) const;
  // True once an sft_sequence trained the final reply only (a template that rewrites earlier turns).
  bool final_turn_only() const { return final_turn_only_; }

 private:
  std::vector<int64_t> encode(const std::string& text, bool special_tokens) const;

  DataSettings data_;
  std::shared_ptr<const text::Tokenizer> tok_;
  std::shared_ptr<const text::ChatTemplate> chat_;
  int64_t eos_;
  mutable bool final_turn_only_ = false;
};

}  // namespace grpo::trainer

#include "trainer/prompt_format.h"

#include "util/error.h"

namespace grpo::trainer {

using ojson = nlohmann::ordered_json;

ojson PromptFormat::prompt_messages(const Example& ex) const {
  ojson messages = ojson::array();
  if (ex.messages.is_array()) {
    messages = ex.messages;
    if (!messages.empty() && messages.back().value("role", "") == "assistant") messages.erase(messages.size() - 1);
    return messages;
  }
  if (!data_.system_prompt.empty()) messages.push_back({{"role", "system"}, {"content", data_.system_prompt}});
  messages.push_back({{"role", "user"}, {"content", apply_template(data_, ex.prompt)}});
  return messages;
}

std::string PromptFormat::prompt_text(const Example& ex) const {
  if (!chat()) {
    if (ex.messages.is_array())
      throw Error(ex.where + ": the prompt is a conversation; it needs the data key prompt_format: chat");
    return apply_template(data_, ex.prompt);
  }
  text::ChatOptions o;
  o.add_generation_prompt = true;
  try {
    return chat_->render(prompt_messages(ex), o);
  } catch (const Error& e) {
    throw Error(ex.where + ": " + e.what());
  }
}

std::vector<int64_t> PromptFormat::encode(const std::string& text, bool special_tokens) const {
  std::vector<int64_t> ids;
  for (int32_t t : tok_->encode(text, special_tokens)) ids.push_back(t);
  return ids;
}

std::vector<int64_t> PromptFormat::prompt_ids(const Example& ex) const {
  return encode(prompt_text(ex), !chat());
}

SftSequence PromptFormat::sft_sequence(const Example& ex) const {
  SftSequence s;
  const std::string& reply = ex.completion.empty() ? ex.answer : ex.completion;
  if (!chat()) {
    s.ids = prompt_ids(ex);
    s.trained.assign(s.ids.size(), 0);
    std::vector<int64_t> c = encode(reply, false);
    c.push_back(eos_);
    s.ids.insert(s.ids.end(), c.begin(), c.end());
    s.trained.resize(s.ids.size(), 1);
    return s;
  }
  ojson messages = ex.messages.is_array() ? ex.messages : prompt_messages(ex);
  if (messages.empty() || messages.back().value("role", "") != "assistant")
    messages.push_back({{"role", "assistant"}, {"content", reply}});
  const std::string eos_text = tok_->id_to_token((int32_t)eos_).value_or("");
  text::TrainingText t;
  try {
    t = text::training_text(*chat_, messages, eos_text);
  } catch (const Error& e) {
    throw Error(ex.where + ": " + e.what());
  }
  if (!t.every_turn) final_turn_only_ = true;
  for (const auto& piece : t.pieces) {
    std::vector<int64_t> ids = encode(piece.text, false);
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    s.trained.resize(s.ids.size(), piece.trained ? 1 : 0);
  }
  return s;
}

}  // namespace grpo::trainer

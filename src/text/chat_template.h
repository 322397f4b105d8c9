// A checkpoint's prompt format: the Jinja `chat_template` that Hugging Face tokenizers carry in
// tokenizer_config.json (or, in newer saves, chat_template.jinja beside it), rendered as
// transformers' `apply_chat_template(messages, tokenize=False, ...)` renders it: the same
// variables (messages, tools, documents, add_generation_prompt and the special tokens), the same
// whitespace rules, and the reasoning field aliasing transformers applies to messages. Torch-free.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "text/jinja/template.h"

namespace grpo::text {

struct ChatOptions {
  bool add_generation_prompt = false;
  nlohmann::ordered_json tools;                                         // null: none
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // more template variables (enable_thinking, ...)
};

class ChatTemplate {
 public:
  // `special_tokens`: {"bos_token": "<s>", ...}, the strings a template may print.
  ChatTemplate(const std::string& source, std::string where,
               nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object());

  // The template of a model or tokenizer directory, or nullopt if it has none. A malformed or
  // unsupported template is an error naming the file and line.
  static std::optional<ChatTemplate> load(const std::string& dir);

  // `messages`: a JSON array of {"role", "content", ...} objects.
  std::string render(const nlohmann::ordered_json& messages, const ChatOptions& options = {}) const;

  const std::string& source() const { return source_; }
  const std::string& where() const { return where_; }

 private:
  std::string source_, where_;
  nlohmann::ordered_json special_tokens_;
  std::shared_ptr<const jinja::Template> template_;
};

}  // namespace grpo::text

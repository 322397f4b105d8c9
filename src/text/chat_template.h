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
#include <vector>

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
  // The same from a tokenizer_config.json already read (`config_where` names it) and the text of a
  // chat_template.jinja ("" if none), which wins over the config's chat_template.
  static std::optional<ChatTemplate> from_config(const nlohmann::ordered_json& config, const std::string& config_where,
                                                 const std::string& jinja_text, const std::string& jinja_where);

  // `messages`: a JSON array of {"role", "content", ...} objects.
  std::string render(const nlohmann::ordered_json& messages, const ChatOptions& options = {}) const;

  const std::string& source() const { return source_; }
  const std::string& where() const { return where_; }

 private:
  std::string source_, where_;
  nlohmann::ordered_json special_tokens_;
  std::shared_ptr<const jinja::Template> template_;
};

// A conversation as training text: consecutive pieces, each trained on (an assistant reply, with
// the template's end-of-turn text) or not (everything the model is given). The pieces joined equal
// the template's rendering of the whole conversation when the template renders each assistant turn
// as the prompt before it (with the generation prompt) followed by the reply; every assistant turn
// is then trained. Templates that rewrite earlier turns (DeepSeek-R1's drops the <think> part of
// past replies and opens a new reply with "<think>\n") train the final reply only, as the prompt
// with its generation opener followed by the reply (less the opener text it repeats) and `eos`.
struct TrainingPiece {
  std::string text;
  bool trained = false;
};
struct TrainingText {
  std::vector<TrainingPiece> pieces;
  bool every_turn = true;  // false: only the final reply is trained (see above)
};
// Throws grpo::Error when the conversation does not end with an assistant message.
TrainingText training_text(const ChatTemplate& tmpl, const nlohmann::ordered_json& messages, const std::string& eos,
                           const ChatOptions& options = {});

}  // namespace grpo::text

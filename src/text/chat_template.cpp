#include "text/chat_template.h"

#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::text {

using ojson = nlohmann::ordered_json;

ChatTemplate::ChatTemplate(const std::string& source, std::string where, ojson special_tokens)
    : source_(source),
      where_(std::move(where)),
      special_tokens_(std::move(special_tokens)),
      template_(std::make_shared<jinja::Template>(source, where_)) {}

std::optional<ChatTemplate> ChatTemplate::load(const std::string& dir) {
  std::string config_path = dir + "/tokenizer_config.json";
  ojson config = ojson::object();
  if (file_exists(config_path)) {
    config = parse_ordered_json(read_file(config_path), config_path);
    if (!config.is_object()) throw Error(config_path + ": expected a JSON object");
  }
  ojson special = ojson::object();
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    if (!config.contains(key)) continue;
    const ojson& t = config[key];
    if (t.is_string()) special[key] = t;
    else if (t.is_object() && t.contains("content") && t["content"].is_string()) special[key] = t["content"];
  }
  std::string jinja_path = dir + "/chat_template.jinja";
  if (file_exists(jinja_path)) return ChatTemplate(read_file(jinja_path), jinja_path, special);
  if (!config.contains("chat_template") || config["chat_template"].is_null()) return std::nullopt;
  const ojson& t = config["chat_template"];
  if (t.is_string()) return ChatTemplate(t.get<std::string>(), config_path + " chat_template", special);
  if (t.is_array()) {  // named templates: [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
    for (const auto& named : t)
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") && named["template"].is_string())
        return ChatTemplate(named["template"].get<std::string>(), config_path + " chat_template (default)", special);
    throw Error(config_path + ": chat_template is a list without a template named 'default'");
  }
  throw Error(config_path + ": chat_template must be a string or a list of named templates");
}

std::string ChatTemplate::render(const ojson& messages, const ChatOptions& options) const {
  if (!messages.is_array()) throw Error(where_ + ": messages must be a JSON array");
  // transformers fills `reasoning_content` (and `thinking`) from whichever of the reasoning field
  // names a message uses, so templates that read either see it.
  ojson aliased = ojson::array();
  for (const auto& m : messages) {
    if (!m.is_object()) throw Error(where_ + ": each message must be a JSON object, got " + m.dump());
    // transformers drops the keys whose value is null (an API's "content": null, "tool_calls": null).
    ojson message = ojson::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!it.value().is_null()) message[it.key()] = it.value();
    const ojson* reasoning = nullptr;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"})
      if (message.contains(key)) {
        reasoning = &message[key];
        break;
      }
    if (!reasoning) {
      aliased.push_back(std::move(message));
      continue;
    }
    ojson copy = ojson::object();
    copy["thinking"] = *reasoning;
    for (auto it = message.begin(); it != message.end(); ++it) copy[it.key()] = it.value();
    copy["reasoning_content"] = *reasoning;
    aliased.push_back(std::move(copy));
  }
  jinja::Dict vars;
  for (auto it = special_tokens_.begin(); it != special_tokens_.end(); ++it) vars.set(it.key(), jinja::from_json(it.value()));
  vars.set("messages", jinja::from_json(aliased));
  vars.set("tools", jinja::from_json(options.tools));
  vars.set("documents", jinja::Value::none());
  vars.set("add_generation_prompt", jinja::Value::boolean(options.add_generation_prompt));
  for (auto it = options.extra.begin(); it != options.extra.end(); ++it) vars.set(it.key(), jinja::from_json(it.value()));
  return template_->render(vars);
}

}  // namespace grpo::text

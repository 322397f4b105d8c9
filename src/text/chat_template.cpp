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
  std::string config_path = dir + "/tokenizer_config.json", jinja_path = dir + "/chat_template.jinja";
  ojson config = file_exists(config_path) ? parse_ordered_json(read_file(config_path), config_path) : ojson::object();
  return from_config(config, config_path, file_exists(jinja_path) ? read_file(jinja_path) : "", jinja_path);
}

std::optional<ChatTemplate> ChatTemplate::from_config(const ojson& config, const std::string& config_path,
                                                      const std::string& jinja_text, const std::string& jinja_path) {
  if (!config.is_object()) throw Error(config_path + ": expected a JSON object");
  ojson special = ojson::object();
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    if (!config.contains(key)) continue;
    const ojson& t = config[key];
    if (t.is_string()) special[key] = t;
    else if (t.is_object() && t.contains("content") && t["content"].is_string()) special[key] = t["content"];
  }
  if (!jinja_text.empty()) return ChatTemplate(jinja_text, jinja_path, special);
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

namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

ojson head(const ojson& messages, size_t n) {
  ojson out = ojson::array();
  for (size_t i = 0; i < n; ++i) out.push_back(messages[i]);
  return out;
}

}  // namespace

TrainingText training_text(const ChatTemplate& tmpl, const ojson& messages, const std::string& eos, const ChatOptions& options) {
  if (!messages.is_array() || messages.empty() || !messages.back().is_object() ||
      messages.back().value("role", "") != "assistant")
    throw Error("a conversation to train on must end with an assistant message");
  ChatOptions prompt_options = options, reply_options = options;
  prompt_options.add_generation_prompt = true;
  reply_options.add_generation_prompt = false;
  const std::string full = tmpl.render(messages, reply_options);
  TrainingText out;
  size_t done = 0;  // characters of `full` already in pieces
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!messages[i].is_object() || messages[i].value("role", "") != "assistant") continue;
    const std::string prompt = tmpl.render(head(messages, i), prompt_options);
    const std::string upto = tmpl.render(head(messages, i + 1), reply_options);
    if (!starts_with(upto, prompt) || !starts_with(full, upto) || prompt.size() < done) {
      out.every_turn = false;
      break;
    }
    out.pieces.push_back({prompt.substr(done), false});
    out.pieces.push_back({upto.substr(prompt.size()), true});
    done = upto.size();
  }
  if (out.every_turn) {
    if (done < full.size()) out.pieces.push_back({full.substr(done), false});
    return out;
  }
  // The final reply alone, after the prompt as the template opens a reply.
  out.pieces.clear();
  const std::string prompt = tmpl.render(head(messages, messages.size() - 1), prompt_options);
  if (starts_with(full, prompt)) {
    out.pieces.push_back({prompt, false});
    out.pieces.push_back({full.substr(prompt.size()), true});
    return out;
  }
  const ojson& content = messages.back().contains("content") ? messages.back()["content"] : ojson();
  std::string reply = content.is_string() ? content.get<std::string>() : "";
  // The opener text the prompt ends with and the reply repeats ("<think>\n"), once.
  for (size_t k = std::min(prompt.size(), reply.size()); k >= 2; --k)
    if (prompt.compare(prompt.size() - k, k, reply, 0, k) == 0 &&
        reply.find_first_not_of(" \t\r\n", 0) < k) {
      reply.erase(0, k);
      break;
    }
  out.pieces.push_back({prompt, false});
  out.pieces.push_back({reply + eos, true});
  return out;
}

}  // namespace grpo::text

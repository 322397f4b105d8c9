// `grpo chat-template`: the text a model sees for each conversation, rendered with the model's
// own chat template (as transformers' apply_chat_template(..., tokenize=False) renders it).
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "text/chat_template.h"
#include "util/error.h"
#include "util/json.h"

namespace grpo::cli {

int run_chat_template(const ChatTemplateArgs& args) {
  using ojson = nlohmann::ordered_json;
  auto tmpl = text::ChatTemplate::load(args.model);
  if (!tmpl) throw Error(args.model + ": no chat template (tokenizer_config.json has no chat_template, and there is no chat_template.jinja)");
  std::ifstream in(args.input, std::ios::binary);
  if (!in) throw Error(args.input + ": cannot open");
  std::ofstream file;
  if (!args.output.empty()) {
    file.open(args.output, std::ios::binary | std::ios::trunc);
    if (!file) throw Error(args.output + ": cannot write");
  }
  std::ostream& out = args.output.empty() ? std::cout : file;
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string where = args.input + ":" + std::to_string(lineno);
    ojson row = parse_ordered_json(line, where);
    text::ChatOptions options;
    options.add_generation_prompt = args.add_generation_prompt;
    ojson messages = row;
    if (row.is_object()) {  // {"messages": [...], "tools": [...], "add_generation_prompt": true, other variables}
      if (!row.contains("messages")) throw Error(where + ": expected a messages array or an object with \"messages\"");
      for (auto it = row.begin(); it != row.end(); ++it) {
        if (it.key() == "messages") messages = it.value();
        else if (it.key() == "tools") options.tools = it.value();
        else if (it.key() == "add_generation_prompt") options.add_generation_prompt = it.value().is_boolean() && it.value().get<bool>();
        else options.extra[it.key()] = it.value();
      }
    }
    if (!messages.is_array()) throw Error(where + ": messages must be a JSON array");
    std::string text;
    try {
      text = tmpl->render(messages, options);
    } catch (const Error& e) {
      throw Error(where + ": " + e.what());
    }
    out << (args.text ? text : ojson(text).dump(-1, ' ', false, ojson::error_handler_t::replace)) << "\n";
  }
  return 0;
}

}  // namespace grpo::cli

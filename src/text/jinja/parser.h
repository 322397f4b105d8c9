// Parses template text into a tree, with the whitespace rules transformers renders chat templates
// under (trim_blocks and lstrip_blocks on; `-` and `+` modifiers on tags). The supported subset is
// what chat templates of released models use: {{ }}, {# #}, if/elif/else, for (with `if`, `else`,
// loop.*, tuple unpacking), set (of names, namespace attributes, and block set), macro, break,
// continue, generation. Anything else is an error that names the template line.
#pragma once

#include <string>

#include "text/jinja/ast.h"

namespace grpo::text::jinja {

// `where` names the template in errors ("tokenizer_config.json chat_template").
Body parse_template(const std::string& source, const std::string& where);

}  // namespace grpo::text::jinja

// Parsing JSON that comes from outside (requests, datasets, checkpoints, recipes) with a bound on
// nesting: a document nested 300,000 levels deep would otherwise overflow the stack of whatever
// walks it (the parser's value tree, its copies, its printer) and kill the process.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace grpo {

constexpr int kMaxJsonDepth = 512;

// The deepest nesting of arrays and objects in `text` (strings skipped); stops counting past `limit`.
int json_depth(std::string_view text, int limit = kMaxJsonDepth + 1);

// json::parse, after checking the nesting depth. Throws grpo::Error naming `where` for a document
// nested deeper than `max_depth` or one that is not valid JSON.
nlohmann::json parse_json(std::string_view text, const std::string& where, int max_depth = kMaxJsonDepth);

// The same, keeping the order of object keys (for data a template or a user reads back in order).
nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& where, int max_depth = kMaxJsonDepth);

}  // namespace grpo

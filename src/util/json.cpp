#include "util/json.h"

#include "util/error.h"

namespace grpo {

int json_depth(std::string_view text, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > deepest) deepest = depth;
      if (deepest >= limit) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

nlohmann::json parse_json(std::string_view text, const std::string& where, int max_depth) {
  if (json_depth(text, max_depth + 1) > max_depth)
    throw Error(where + ": JSON nested deeper than " + std::to_string(max_depth) + " levels");
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    throw Error(where + ": not valid JSON: " + e.what());
  }
}

nlohmann::ordered_json parse_ordered_json(std::string_view text, const std::string& where, int max_depth) {
  if (json_depth(text, max_depth + 1) > max_depth)
    throw Error(where + ": JSON nested deeper than " + std::to_string(max_depth) + " levels");
  try {
    return nlohmann::ordered_json::parse(text.begin(), text.end());
  } catch (const nlohmann::ordered_json::exception& e) {
    throw Error(where + ": not valid JSON: " + e.what());
  }
}

}  // namespace grpo

// JSON Lines input: one JSON object per non-blank line, errors naming file:line.
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace grpo {

constexpr size_t kMaxJsonlLineBytes = size_t(256) << 20;

// Calls `fn(row, where)` for each non-blank line of `path`, in order; `where` is "path:line".
// Throws grpo::Error for an unreadable file, invalid JSON, a line that is not an object, or one
// longer than kMaxJsonlLineBytes.
void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json& row, const std::string& where)>& fn);

}  // namespace grpo

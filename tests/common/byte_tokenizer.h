// A byte-level BPE tokenizer.json built in code, for tests that need a tokenizer without files.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "text/tokenizer.h"

namespace grpo::testing {

// Vocabulary: the 256 byte-alphabet characters get ids 0..255 in byte order, then merges.
inline std::string byte_char(int b) { return grpo::text::byte_level_char(static_cast<uint8_t>(b)); }

inline std::string make_tokenizer(const std::string& pre_tokenizer, const std::vector<std::pair<std::string, std::string>>& merges,
                           const std::string& added = "[]", const std::string& post = "null") {
  std::string vocab = "{";
  std::vector<std::string> toks;
  for (int b = 0; b < 256; ++b) toks.push_back(byte_char(b));
  std::string merges_json = "[";
  for (const auto& m : merges) {
    toks.push_back(m.first + m.second);
    merges_json += (merges_json.size() > 1 ? "," : "") + std::string("[\"") + m.first + "\",\"" + m.second + "\"]";
  }
  merges_json += "]";
  for (size_t i = 0; i < toks.size(); ++i) {
    std::string t = toks[i];
    std::string esc;
    for (char c : t) {
      if (c == '"' || c == '\\') esc += '\\';
      esc += c;
    }
    vocab += (i ? "," : "") + std::string("\"") + esc + "\":" + std::to_string(i);
  }
  vocab += "}";
  return R"({"version":"1.0","added_tokens":)" + added + R"(,"normalizer":null,"pre_tokenizer":)" + pre_tokenizer +
         R"(,"post_processor":)" + post + R"(,"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":)" + vocab +
         R"(,"merges":)" + merges_json + "}}";
}

}  // namespace grpo::testing

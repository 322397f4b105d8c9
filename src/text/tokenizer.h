// Byte-level BPE tokenizer read from a Hugging Face `tokenizer.json`, as DeepSeek-V3 and Qwen2
// ship it. Torch-free.
//
// Encoding, in the order `tokenizers` applies it:
//   1. added tokens (special or not) are cut out of the text first and map to their ids;
//   2. the normalizer (none, or NFC) runs on the rest;
//   3. the pre-tokenizer splits it: a Sequence of Split steps (regexes compiled with RE2; the
//      `\s+(?!\S)` lookahead that these regexes use, which RE2 lacks, is emulated exactly) and the
//      ByteLevel step (bytes -> printable unicode alphabet, optionally with the GPT-2 regex);
//   4. BPE merges each piece by rank, lowest first, leftmost among equals;
//   5. the post-processor (TemplateProcessing) adds BOS/EOS when add_special_tokens is set.
// Decoding maps ids back to strings and the byte-level alphabet back to bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace grpo::text {

class Tokenizer {
 public:
  // `path` is a tokenizer.json or a directory holding one. Unsupported components are errors
  // naming the file and the JSON key.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json(const std::string& json_text, const std::string& where);
  // The built-in byte-level tokenizer ("builtin:bytes"): one token per byte (ids 0..255 in byte
  // order), <s> = 256, </s> = 257, no merges. byte_level_json() is its tokenizer.json, the file a
  // checkpoint of a run that used it carries.
  static Tokenizer byte_level();
  static std::string byte_level_json();

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = false) const;

  int64_t vocab_size() const;  // model vocabulary plus added tokens
  std::optional<int32_t> token_to_id(const std::string& token) const;
  std::optional<std::string> id_to_token(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// GPT-2's reversible byte -> printable character map, as UTF-8 (byte-level BPE vocabularies are
// written in it).
const std::string& byte_level_char(uint8_t byte);

}  // namespace grpo::text

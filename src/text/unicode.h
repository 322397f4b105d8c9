// UTF-8 helpers for the tokenizer. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace grpo::text {

// Length in bytes of the UTF-8 sequence starting at s[i] (1 for an invalid lead byte).
size_t utf8_char_len(std::string_view s, size_t i);
// Code point at s[i] (U+FFFD for invalid input).
uint32_t utf8_decode_at(std::string_view s, size_t i);
void utf8_append(std::string& out, uint32_t cp);
// Unicode White_Space as Oniguruma's \s sees it: U+0009-000D, U+0085, and categories Z*.
bool is_unicode_space(uint32_t cp);
// Bytes -> valid UTF-8, each maximal invalid subsequence replaced by U+FFFD (like Rust's
// String::from_utf8_lossy, which the tokenizers decoder uses).
std::string utf8_lossy(std::string_view bytes);

}  // namespace grpo::text

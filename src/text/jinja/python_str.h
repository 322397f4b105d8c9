// Python's str methods as chat templates call them (strip, split, replace, startswith, ...), with
// Python's results on UTF-8 text, and Jinja's title filter. Misuse throws std::runtime_error.
#pragma once

#include <cstdint>
#include <string>

#include "text/jinja/value.h"

namespace grpo::text::jinja {

// str.strip/lstrip/rstrip: whitespace, or any of `chars` when it is a string.
std::string py_strip(const std::string& s, const Value& chars, bool left, bool right);
// str.split: at `sep` when it is a string, else at runs of whitespace; maxsplit < 0 for no limit.
Value py_split(const std::string& s, const Value& sep, int64_t maxsplit);
std::string ascii_upper(std::string s);
std::string ascii_lower(std::string s);
std::string py_capitalize(const std::string& s);
// Jinja's title filter: the first letter of each word upper, the rest lower.
std::string title_case(const std::string& s);
// str.replace, at most `count` times (count < 0: all).
std::string py_replace(const std::string& s, const std::string& from, const std::string& to, int64_t count);
// str.startswith / str.endswith: `what` a string or a list of them.
bool starts_or_ends(const std::string& s, const Value& what, bool start);

}  // namespace grpo::text::jinja

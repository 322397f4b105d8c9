// The Split pre-tokenizer of Hugging Face `tokenizers`: its regex, written for Oniguruma, compiled
// for RE2, and a text cut at the regex's matches the way `tokenizers` cuts it. Torch-free.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace re2 {
class RE2;
}

namespace grpo::text {

// A pre-tokenizer regex compiled for RE2. Oniguruma (which `tokenizers` uses) reads \s, \d and
// \w as Unicode classes and supports lookahead; RE2 reads them as ASCII and has no lookahead. The
// classes are rewritten, and the one lookahead these tokenizers use, `\s+(?!\S)` ("a whitespace
// run, minus its last character when a non-space follows"), becomes a capture group whose match is
// shortened after the fact (see split()). Any other lookaround is an error.
struct SplitRegex {
  std::shared_ptr<re2::RE2> re;
  int ws_group = 0;  // capture group standing for `\s+(?!\S)`, 0 if none
  // The group is a whole top-level alternative, so it can only produce all-whitespace matches:
  // other matches need no capture pass (RE2's DFA finds their bounds much faster).
  bool ws_top_level = false;
  int groups = 0;
};

// Compiles `pattern`; errors name `where` and the pattern.
SplitRegex compile_split_regex(const std::string& pattern, const std::string& where);

// What becomes of a match: its own piece, dropped, or joined to the piece before or after it.
enum class SplitBehavior { Isolated, Removed, MergedWithPrevious, MergedWithNext };

// Appends to `out` the pieces of `s` (views into s) cut at the regex's matches.
void split(const SplitRegex& rx, SplitBehavior behavior, std::string_view s, std::vector<std::string_view>& out);

}  // namespace grpo::text

#include "text/split_regex.h"

#include <re2/re2.h>

#include "text/unicode.h"
#include "util/error.h"

namespace grpo::text {

namespace {

// The members of Oniguruma's Unicode \s, written for use inside an RE2 character class.
const std::string kSpaceMembers = "\\t\\n\\x{0B}\\f\\r \\x{85}\\p{Z}";

}  // namespace

SplitRegex compile_split_regex(const std::string& pattern, const std::string& where) {
  static const std::string kLookahead = "\\s+(?!\\S)";
  std::string out;
  bool in_class = false, ws_top_level = false;
  int group = 0, ws_group = 0, depth = 0;
  for (size_t i = 0; i < pattern.size();) {
    if (!in_class && pattern.compare(i, kLookahead.size(), kLookahead) == 0) {
      ws_group = ++group;
      size_t end = i + kLookahead.size();
      ws_top_level = depth == 0 && (i == 0 || pattern[i - 1] == '|') && (end == pattern.size() || pattern[end] == '|');
      out += "([" + kSpaceMembers + "]+)";
      i += kLookahead.size();
      continue;
    }
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char n = pattern[i + 1];
      if (n == 's') {
        out += in_class ? kSpaceMembers : "[" + kSpaceMembers + "]";
      } else if (n == 'S') {
        if (in_class) throw Error(where + ": \\S inside a character class is not supported: " + pattern);
        out += "[^" + kSpaceMembers + "]";
      } else if (n == 'd') {
        out += "\\p{Nd}";
      } else if (n == 'w') {
        out += in_class ? "\\p{L}\\p{M}\\p{Nd}\\p{Pc}" : "[\\p{L}\\p{M}\\p{Nd}\\p{Pc}]";
      } else {
        out += c;
        out += n;
      }
      i += 2;
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      out += c;
      ++i;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < pattern.size() && pattern[i] == '^') out += pattern[i++];
      if (i < pattern.size() && pattern[i] == ']') out += pattern[i++];  // literal ']' first in a class
      continue;
    }
    if (c == '(') {
      if (pattern.compare(i, 3, "(?=") == 0 || pattern.compare(i, 3, "(?!") == 0 || pattern.compare(i, 4, "(?<=") == 0 ||
          pattern.compare(i, 4, "(?<!") == 0 || pattern.compare(i, 3, "(?>") == 0)
        throw Error(where + ": lookaround or atomic group is not supported (only \\s+(?!\\S)): " + pattern);
      if (i + 1 >= pattern.size() || pattern[i + 1] != '?') ++group;
      ++depth;
    }
    if (c == ')') --depth;
    out += c;
    ++i;
  }
  RE2::Options opts;
  opts.set_encoding(RE2::Options::EncodingUTF8);
  opts.set_log_errors(false);
  opts.set_max_mem(64 << 20);
  SplitRegex r;
  r.re = std::make_shared<RE2>(out, opts);
  if (!r.re->ok()) throw Error(where + ": cannot compile regex '" + pattern + "': " + r.re->error());
  r.ws_group = ws_group;
  r.ws_top_level = ws_top_level;
  r.groups = r.re->NumberOfCapturingGroups();
  return r;
}

void split(const SplitRegex& rx, SplitBehavior behavior, std::string_view s, std::vector<std::string_view>& out) {
  std::vector<re2::StringPiece> m(rx.groups + 1);
  size_t pos = 0, last = 0;  // pos: where to search next; last: end of the previous emitted piece
  std::vector<std::pair<size_t, size_t>> matches;
  const re2::StringPiece text(s.data(), s.size());
  while (pos < s.size()) {
    if (!rx.re->Match(text, pos, s.size(), RE2::UNANCHORED, m.data(), 1)) break;
    size_t b = m[0].data() - s.data(), e = b + m[0].size();
    bool need_groups = rx.ws_group && !rx.ws_top_level;
    if (rx.ws_group && rx.ws_top_level && e < s.size()) {
      need_groups = true;  // only an all-whitespace match can come from the lookahead alternative
      for (size_t k = b; k < e && need_groups; k += utf8_char_len(s, k)) need_groups = is_unicode_space(utf8_decode_at(s, k));
    }
    if (need_groups) {
      // Same start, same leftmost-first choice: the anchored run with captures gives this match.
      rx.re->Match(text, b, s.size(), RE2::ANCHOR_START, m.data(), (int)m.size());
      e = b + m[0].size();
    }
    if (need_groups && m[rx.ws_group].data() != nullptr && e < s.size()) {
      // `\s+(?!\S)`: a non-space follows, so give the run's last character back (when the run
      // has more than one; a single one is matched by the `\s+` alternative instead).
      uint32_t next = utf8_decode_at(s, e);
      if (!is_unicode_space(next)) {
        size_t ws_b = m[rx.ws_group].data() - s.data();
        size_t k = e - 1;
        while (k > ws_b && (static_cast<uint8_t>(s[k]) & 0xC0) == 0x80) --k;  // start of the last char
        if (k > ws_b) e = k;
      }
    }
    if (e == b) {  // empty match: move on by one character
      pos = b + utf8_char_len(s, b);
      continue;
    }
    matches.emplace_back(b, e);
    pos = e;
  }
  for (auto [b, e] : matches) {
    switch (behavior) {
      case SplitBehavior::Isolated:
        if (b > last) out.push_back(s.substr(last, b - last));
        out.push_back(s.substr(b, e - b));
        break;
      case SplitBehavior::Removed:
        if (b > last) out.push_back(s.substr(last, b - last));
        break;
      case SplitBehavior::MergedWithPrevious:
        out.push_back(s.substr(last, e - last));
        break;
      case SplitBehavior::MergedWithNext:
        if (b > last) out.push_back(s.substr(last, b - last));
        // the match starts the next piece
        e = b;
        break;
    }
    last = e;
  }
  if (last < s.size()) out.push_back(s.substr(last));
}

}  // namespace grpo::text

#include "text/jinja/lexer.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "text/unicode.h"
#include "util/error.h"

namespace grpo::text::jinja {
namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

void rtrim_ws(std::string& s) {
  while (!s.empty() && is_ws(s.back())) s.pop_back();
}

// Index of the closing `close` of a tag whose inside starts at `from`, skipping string literals.
size_t find_close(const std::string& src, size_t from, const char* close) {
  char quote = 0;
  for (size_t i = from; i + 1 < src.size(); ++i) {
    char c = src[i];
    if (quote) {
      if (c == '\\') ++i;
      else if (c == quote) quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
    } else if (c == close[0] && src[i + 1] == close[1]) {
      return i;
    }
  }
  return std::string::npos;
}

// The chunks of normalised template text, with the whitespace rules applied.
std::vector<Chunk> scan_text(const std::string& src, const std::string& where) {
  std::vector<Chunk> out;
  size_t pos = 0;
  int line = 1;
  bool strip_next = false, trim_newline = false;
  auto advance_line = [&](size_t from, size_t to) { line += (int)std::count(src.begin() + from, src.begin() + to, '\n'); };
  while (true) {
    size_t open = pos;
    while ((open = src.find('{', open)) != std::string::npos) {
      if (open + 1 < src.size() && (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#')) break;
      ++open;
    }
    std::string text = src.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
    if (strip_next) {
      size_t k = 0;
      while (k < text.size() && is_ws(text[k])) ++k;
      text.erase(0, k);
    } else if (trim_newline && !text.empty() && text[0] == '\n') {
      text.erase(0, 1);
    }
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Chunk::Type::Text, text, line});
      break;
    }
    int text_line = line;
    advance_line(pos, open);
    char kind = src[open + 1];
    size_t inner = open + 2;
    char modifier = inner < src.size() ? src[inner] : 0;
    if (modifier == '-') {
      rtrim_ws(text);
    } else if (kind != '{' && modifier != '+') {
      // lstrip_blocks: spaces and tabs between the start of the line and a block or comment tag go.
      size_t k = open;
      while (k > 0 && (src[k - 1] == ' ' || src[k - 1] == '\t')) --k;
      if (k == 0 || src[k - 1] == '\n') text.erase(text.size() - std::min(text.size(), open - k));
    }
    if (!text.empty()) out.push_back({Chunk::Type::Text, text, text_line});
    if (modifier == '-' || modifier == '+') ++inner;
    const char* close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t end = kind == '#' ? src.find("#}", inner) : find_close(src, inner, close);
    if (end == std::string::npos)
      throw Error(where + ": line " + std::to_string(line) + ": '" + std::string("{") + kind + "' is never closed by '" + close + "'");
    bool strip_after = end > inner && src[end - 1] == '-';
    std::string body = src.substr(inner, (strip_after ? end - 1 : end) - inner);
    if (kind == '{') out.push_back({Chunk::Type::Expr, body, line});
    if (kind == '%') out.push_back({Chunk::Type::Stmt, body, line});
    strip_next = strip_after;
    trim_newline = !strip_after && kind != '{';
    advance_line(open, end + 2);
    pos = end + 2;
  }
  return out;
}


std::string unescape(const std::string& raw, int line, const std::string& where) {
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\\' || i + 1 == raw.size()) {
      out += raw[i];
      continue;
    }
    char c = raw[++i];
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case 'a': out += '\a'; break;
      case '0': out += '\0'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case '\n': break;
      case 'x':
      case 'u':
      case 'U': {
        size_t n = c == 'x' ? 2 : c == 'u' ? 4 : 8;
        std::string hex = raw.substr(i + 1, n);
        if (hex.size() != n || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
          throw Error(where + ": line " + std::to_string(line) + ": bad \\" + c + " escape");
        unsigned long cp = std::stoul(hex, nullptr, 16);
        if (cp > 0x10FFFF) throw Error(where + ": line " + std::to_string(line) + ": \\" + c + hex + " is not a code point");
        utf8_append(out, (uint32_t)cp);
        i += n;
        break;
      }
      default:
        out += '\\';
        out += c;
    }
  }
  return out;
}

}  // namespace

std::vector<Chunk> scan(const std::string& source, const std::string& where) {
  // As Jinja reads a template: line ends become \n, and one final newline is dropped.
  std::string text;
  text.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      text += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      text += source[i];
    }
  }
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return scan_text(text, where);
}

std::vector<Tok> tokenize(const std::string& s, int line, const std::string& where) {
  static const char* kOps[] = {"==", "!=", "<=", ">=", "//", "**", "<", ">", "+", "-", "*", "/", "%", "~",
                               "|", ".", ",", ":", "(", ")", "[", "]", "{", "}", "="};
  std::vector<Tok> out;
  size_t i = 0;
  while (i < s.size()) {
    char c = s[i];
    if (c == '\n') ++line;
    if (is_ws(c)) {
      ++i;
      continue;
    }
    Tok t;
    t.line = line;
    if (std::isalpha((unsigned char)c) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum((unsigned char)s[j]) || s[j] == '_')) ++j;
      t.type = Tok::Type::Name;
      t.s = s.substr(i, j - i);
      i = j;
    } else if (std::isdigit((unsigned char)c)) {
      size_t j = i;
      while (j < s.size() && (std::isdigit((unsigned char)s[j]) || s[j] == '_')) ++j;
      bool is_float = false;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit((unsigned char)s[j + 1])) {
        is_float = true;
        ++j;
        while (j < s.size() && std::isdigit((unsigned char)s[j])) ++j;
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && std::isdigit((unsigned char)s[k])) {
          is_float = true;
          j = k;
          while (j < s.size() && std::isdigit((unsigned char)s[j])) ++j;
        }
      }
      std::string num = s.substr(i, j - i);
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      if (is_float) {
        t.type = Tok::Type::Float;
        t.f = std::strtod(num.c_str(), nullptr);  // past the range: inf, as Python reads it
      } else {
        t.type = Tok::Type::Int;
        errno = 0;
        t.i = std::strtoll(num.c_str(), nullptr, 10);
        if (errno == ERANGE) throw Error(where + ": line " + std::to_string(line) + ": integer " + num + " is too large");
      }
      i = j;
    } else if (c == '\'' || c == '"') {
      size_t j = i + 1;
      while (j < s.size() && s[j] != c) j += s[j] == '\\' ? 2 : 1;
      if (j >= s.size()) throw Error(where + ": line " + std::to_string(line) + ": unterminated string");
      t.type = Tok::Type::Str;
      t.s = unescape(s.substr(i + 1, j - i - 1), line, where);
      line += (int)std::count(s.begin() + i, s.begin() + j, '\n');
      i = j + 1;
    } else {
      t.type = Tok::Type::Op;
      for (const char* op : kOps)
        if (s.compare(i, std::strlen(op), op) == 0) {
          t.s = op;
          break;
        }
      if (t.s.empty()) throw Error(where + ": line " + std::to_string(line) + ": unexpected character '" + std::string(1, c) + "'");
      i += t.s.size();
    }
    out.push_back(std::move(t));
  }
  Tok end;
  end.type = Tok::Type::End;
  end.line = line;
  out.push_back(end);
  return out;
}

}  // namespace grpo::text::jinja

#include "text/jinja/python_str.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace grpo::text::jinja {
namespace {

using K = Value::Kind;

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

const std::string& as_str(const Value& v, const char* what) {
  if (v.kind != K::String) fail(std::string(what) + " must be a string, not " + type_name(v));
  return v.s;
}

}  // namespace

// Python's str.strip/lstrip/rstrip: whitespace, or any of `chars`.
std::string py_strip(const std::string& s, const Value& chars, bool left, bool right) {
  auto cps = code_points(s);
  std::vector<uint32_t> set;
  bool by_chars = chars.kind == K::String;
  if (by_chars) set = code_points(chars.s);
  auto strip_it = [&](uint32_t c) { return by_chars ? std::find(set.begin(), set.end(), c) != set.end() : py_isspace(c); };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && strip_it(cps[b])) ++b;
  if (right)
    while (e > b && strip_it(cps[e - 1])) --e;
  return from_code_points(cps, b, e);
}

Value py_split(const std::string& s, const Value& sep, int64_t maxsplit) {
  List out;
  if (sep.kind != K::String) {  // runs of whitespace, empty parts dropped
    auto cps = code_points(s);
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && py_isspace(cps[i])) ++i;
      if (i == cps.size()) break;
      size_t j = i;
      if (maxsplit >= 0 && (int64_t)out.size() == maxsplit) {
        j = cps.size();
        while (j > i && py_isspace(cps[j - 1])) --j;
      } else {
        while (j < cps.size() && !py_isspace(cps[j])) ++j;
      }
      out.push_back(Value::string(from_code_points(cps, i, j)));
      i = j;
    }
    return Value::make_list(std::move(out));
  }
  if (sep.s.empty()) fail("empty separator");
  size_t pos = 0;
  while (true) {
    size_t at = (maxsplit >= 0 && (int64_t)out.size() == maxsplit) ? std::string::npos : s.find(sep.s, pos);
    if (at == std::string::npos) {
      out.push_back(Value::string(s.substr(pos)));
      break;
    }
    out.push_back(Value::string(s.substr(pos, at - pos)));
    pos = at + sep.s.size();
  }
  return Value::make_list(std::move(out));
}

std::string ascii_upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = (char)(c - 32);
  return s;
}
std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
  return s;
}
std::string py_capitalize(const std::string& s) {
  std::string out = ascii_lower(s);
  if (!out.empty() && out[0] >= 'a' && out[0] <= 'z') out[0] = (char)(out[0] - 32);
  return out;
}
// Jinja's title filter: the first letter of each word upper, the rest lower.
std::string title_case(const std::string& s) {
  std::string out;
  bool start = true;
  for (char c : s) {
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (alpha) out += start ? (char)std::toupper((unsigned char)c) : (char)std::tolower((unsigned char)c);
    else out += c;
    start = !(alpha || (unsigned char)c >= 0x80 || (c >= '0' && c <= '9') || c == '\'');
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  size_t pos = 0;
  int64_t done = 0;
  if (from.empty()) fail("replace of an empty string is not supported");
  while (count < 0 || done < count) {
    size_t at = s.find(from, pos);
    if (at == std::string::npos) break;
    out += s.substr(pos, at - pos) + to;
    pos = at + from.size();
    ++done;
  }
  return out + s.substr(pos);
}

bool starts_or_ends(const std::string& s, const Value& what, bool start) {
  auto one = [&](const std::string& p) {
    if (p.size() > s.size()) return false;
    return start ? s.compare(0, p.size(), p) == 0 : s.compare(s.size() - p.size(), p.size(), p) == 0;
  };
  if (what.kind == K::List) {
    for (const auto& p : *what.list)
      if (one(as_str(p, "prefix"))) return true;
    return false;
  }
  return one(as_str(what, "prefix"));
}

}  // namespace grpo::text::jinja

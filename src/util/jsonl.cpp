#include "util/jsonl.h"

#include <fstream>

#include "util/error.h"
#include "util/json.h"

namespace grpo {

namespace {

// std::getline with a bound: a line of /dev/zero or a runaway file is an error, not all memory.
bool read_line(std::istream& in, std::string& line, const std::string& path, int64_t lineno) {
  line.clear();
  std::streambuf* sb = in.rdbuf();
  for (;;) {
    int c = sb->sbumpc();
    if (c == std::char_traits<char>::eof()) return !line.empty();
    if (c == '\n') return true;
    line.push_back((char)c);
    if (line.size() > kMaxJsonlLineBytes)
      throw Error(path + ":" + std::to_string(lineno) + ": a line longer than " + std::to_string(kMaxJsonlLineBytes) +
                  " bytes");
  }
}

}  // namespace

void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json&, const std::string&)>& fn) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open");
  std::string line;
  for (int64_t lineno = 1; read_line(in, line, path, lineno); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string where = path + ":" + std::to_string(lineno);
    nlohmann::json row = parse_json(line, where);
    if (!row.is_object()) throw Error(where + ": expected a JSON object");
    fn(row, where);
  }
}

}  // namespace grpo

#include "util/jsonl.h"

#include <fstream>

#include "util/error.h"
#include "util/json.h"

namespace grpo {

void for_each_jsonl_object(const std::string& path,
                           const std::function<void(const nlohmann::json&, const std::string&)>& fn) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open");
  std::string line;
  for (int64_t lineno = 1; std::getline(in, line); ++lineno) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string where = path + ":" + std::to_string(lineno);
    nlohmann::json row = parse_json(line, where);
    if (!row.is_object()) throw Error(where + ": expected a JSON object");
    fn(row, where);
  }
}

}  // namespace grpo

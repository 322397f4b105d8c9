#include "trainer/run_state.h"

#include <algorithm>
#include <filesystem>
#include <vector>

#include "text/tokenizer.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::trainer {

namespace fs = std::filesystem;
using json = nlohmann::json;

json to_json(const RunState& s) {
  json j = {{"step", s.step}, {"position", s.position}, {"num_tokens", s.num_tokens}, {"warm_start_done", s.warm_start_done},
            {"warm_start_step", s.warm_start_step}};
  if (!s.warm_start_done) j["warm_start_rng"] = s.warm_start_rng;
  return j;
}

RunState read_run_state(const std::string& path) {
  RunState s;
  try {
    json j = parse_json(read_file(path), path);
    s.step = j.at("step");
    s.position = j.at("position");
    s.num_tokens = j.value("num_tokens", int64_t(0));
    s.warm_start_done = j.at("warm_start_done");
    s.warm_start_step = j.value("warm_start_step", int64_t(0));
    s.warm_start_rng = j.value("warm_start_rng", std::string());
  } catch (const json::exception& e) {
    throw Error(path + ": " + e.what());
  }
  return s;
}

CheckpointStore::CheckpointStore(std::string out_dir, int64_t total_limit)
    : out_(std::move(out_dir)), total_limit_(total_limit) {}

void CheckpointStore::save(const std::string& name, const std::function<void(const std::string&)>& write) {
  const std::string dir = out_ + "/" + name, tmp = dir + ".tmp";
  remove_tree(tmp);
  make_directories(tmp);
  write(tmp);
  replace_directory(tmp, dir);
  write_file_atomic(out_ + "/latest", name + "\n");
  prune(name);
}

std::string CheckpointStore::latest() const {
  const std::string pointer = out_ + "/latest";
  if (!file_exists(pointer)) return "";
  std::string name = read_file(pointer);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const std::string dir = out_ + "/" + name;
  if (is_directory(dir)) return dir;
  // Stopped between the two renames of a re-saved checkpoint: the complete old one is `.old`.
  if (is_directory(dir + ".old")) return dir + ".old";
  throw Error(pointer + " names " + name + ", which is not in " + out_);
}

void CheckpointStore::prune(const std::string& keep) {
  if (total_limit_ <= 0) return;
  std::vector<std::pair<int64_t, std::string>> steps;  // checkpoint-N, by N
  for (const std::string& n : list_directory(out_)) {
    if (n.rfind("checkpoint-", 0) != 0 || !is_directory(out_ + "/" + n)) continue;
    const std::string digits = n.substr(11);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    if (digits == "0") continue;  // the policy GRPO started from: the reference is rebuilt from it
    steps.emplace_back(std::stoll(digits), n);
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + total_limit_ < steps.size(); ++i)
    if (steps[i].second != keep) remove_tree(out_ + "/" + steps[i].second);
}

HubFiles hub_files(const ModelSettings& m, int64_t bos_id, int64_t eos_id, const std::string& bos, const std::string& eos,
                   int64_t max_length) {
  HubFiles f;
  std::string source;  // the directory whose tokenizer files are the base's
  if (m.tokenizer == "builtin:bytes") {
    f.tokenizer_json = text::Tokenizer::byte_level_json();
  } else {
    std::string path = m.tokenizer.empty() ? m.model_dir + "/tokenizer.json" : m.tokenizer;
    if (is_directory(path)) path += "/tokenizer.json";
    f.tokenizer_json = read_file(path);
    source = fs::path(path).parent_path().string();
  }
  auto read_json = [&](const std::string& name) -> json {
    for (const std::string& dir : {source, m.model_dir})
      if (!dir.empty() && file_exists(dir + "/" + name)) {
        return parse_json(read_file(dir + "/" + name), dir + "/" + name);
      }
    return nullptr;
  };
  f.tokenizer_config = read_json("tokenizer_config.json");
  if (f.tokenizer_config.is_null())
    f.tokenizer_config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                          {"bos_token", bos},
                          {"eos_token", eos},
                          {"model_max_length", max_length},
                          {"clean_up_tokenization_spaces", false}};
  f.tokenizer_config.erase("auto_map");
  f.special_tokens_map = read_json("special_tokens_map.json");
  f.generation_config = read_json("generation_config.json");
  if (f.generation_config.is_null()) f.generation_config = json::object();
  f.generation_config["bos_token_id"] = bos_id;
  f.generation_config["eos_token_id"] = eos_id;
  return f;
}

void write_hub_files(const HubFiles& f, const std::string& dir) {
  write_file_atomic(dir + "/tokenizer.json", f.tokenizer_json);
  write_file_atomic(dir + "/tokenizer_config.json", f.tokenizer_config.dump(2) + "\n");
  write_file_atomic(dir + "/generation_config.json", f.generation_config.dump(2) + "\n");
  if (!f.special_tokens_map.is_null())
    write_file_atomic(dir + "/special_tokens_map.json", f.special_tokens_map.dump(2) + "\n");
}

}  // namespace grpo::trainer

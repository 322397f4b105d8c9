#include "trainer/run_state.h"

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cstdio>
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

namespace {

// Bytes of the regular files under `path`.
int64_t tree_bytes(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return 0;
  if (S_ISREG(st.st_mode)) return st.st_size;
  if (!S_ISDIR(st.st_mode)) return 0;
  int64_t total = 0;
  for (const auto& n : list_directory(path)) total += tree_bytes(path + "/" + n);
  return total;
}

}  // namespace

void CheckpointStore::save(const std::string& name, const std::function<void(const std::string&)>& write) {
  const std::string dir = out_ + "/" + name, tmp = staging_dir(name);
  remove_tree(tmp);
  // Room for one more checkpoint the size of the last one, checked before writing: a serializer
  // that meets a full disk halfway may not fail cleanly.
  std::string last;
  try {
    last = latest();
  } catch (const std::exception&) {
  }
  struct statvfs fs {};
  if (!last.empty() && statvfs(out_.c_str(), &fs) == 0) {
    const int64_t need = tree_bytes(last) + (tree_bytes(last) >> 5), room = (int64_t)fs.f_bavail * (int64_t)fs.f_frsize;
    if (room < need)
      throw Error("saving " + name + " needs about " + std::to_string(need >> 20) + " MiB and " + out_ + " has " +
                  std::to_string(room >> 20) + " MiB free (the disk is full); the last complete checkpoint, " + last +
                  ", is intact: free space and run again with --resume");
  }
  try {
    make_directories(tmp);
    write(tmp);
  } catch (const std::exception& e) {
    // A full disk or a failed write: the partial copy goes, the checkpoints before stay as they were.
    std::string what = e.what();
    if (auto nl = what.find('\n'); nl != std::string::npos) what = what.substr(0, nl);  // torch appends a backtrace
    try {
      remove_tree(tmp);
    } catch (const std::exception&) {
    }
    const bool full = what.find("No space left") != std::string::npos || what.find("ENOSPC") != std::string::npos ||
                      what.find("Disk quota") != std::string::npos;
    throw Error("saving " + name + " failed" + (full ? " (the disk is full)" : "") + ": " + what + "; " +
                (last.empty() ? std::string("no earlier checkpoint")
                              : "the last complete checkpoint, " + last + ", is intact: free space and run again with --resume"));
  }
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

std::string CheckpointStore::resume_point() const {
  std::string dir = latest();
  if (dir.empty())
    fprintf(stderr, "grpo train: --resume: no checkpoint in %s yet; starting from the beginning\n", out_.c_str());
  return dir;
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
  for (const std::string& dir : {source, m.model_dir})
    if (!dir.empty() && file_exists(dir + "/chat_template.jinja")) {
      f.chat_template = read_file(dir + "/chat_template.jinja");
      break;
    }
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
  if (!f.chat_template.empty()) write_file_atomic(dir + "/chat_template.jinja", f.chat_template);
}

}  // namespace grpo::trainer

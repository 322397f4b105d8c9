#include "trainer/pipeline.h"

#include <cstdio>

#include "util/error.h"
#include "util/files.h"
#include "util/json.h"
#include "util/jsonl.h"

namespace grpo::trainer {

using json = nlohmann::json;

Pipeline::Pipeline(std::string out_dir, const Recipe& recipe, bool resume, bool writes)
    : path_(out_dir + "/pipeline.json"), writes_(writes) {
  json stages = json::array();
  for (const auto& s : recipe.stages)
    stages.push_back({{"name", s.name}, {"type", to_string(s.type)}, {"status", "pending"}, {"output", nullptr},
                      {"metrics", json::object()}});
  record_ = {{"recipe", recipe.path}, {"stages", stages}};
  if (resume && file_exists(path_)) {
    json old = parse_json(read_file(path_, int64_t(16) << 20), path_);
    const json& prev = old.at("stages");
    if (!prev.is_array() || prev.size() != stages.size())
      throw Error(path_ + ": written for " + std::to_string(prev.size()) + " stages; the recipe has " +
                  std::to_string(stages.size()) + " (resume with the recipe that started the run)");
    for (size_t i = 0; i < stages.size(); ++i) {
      if (prev[i].value("name", "") != stages[i]["name"] || prev[i].value("type", "") != stages[i]["type"])
        throw Error(path_ + ": stage " + std::to_string(i) + " was '" + prev[i].value("name", "") + "' (" +
                    prev[i].value("type", "") + "); the recipe has '" + stages[i]["name"].get<std::string>() + "'");
      if (prev[i].value("status", "") == "done") record_["stages"][i] = prev[i];
    }
  }
  if (writes_) make_directories(out_dir);
  write();
}

bool Pipeline::done(size_t i) const { return record_["stages"][i]["status"] == "done"; }

std::string Pipeline::output_of(const std::string& name) const {
  for (const auto& s : record_["stages"])
    if (s["name"] == name) {
      if (s["status"] != "done" || !s["output"].is_string())
        throw Error(path_ + ": stage '" + name + "' has not finished, so a later stage cannot start from it");
      return s["output"];
    }
  throw Error(path_ + ": no stage named '" + name + "'");
}

void Pipeline::start(size_t i) {
  record_["stages"][i]["status"] = "running";
  write();
}

void Pipeline::finish(size_t i, const std::string& output, const json& metrics) {
  if (output.empty()) throw Error(path_ + ": stage '" + record_["stages"][i]["name"].get<std::string>() + "' finished without a checkpoint");
  record_["stages"][i]["status"] = "done";
  record_["stages"][i]["output"] = output;
  record_["stages"][i]["metrics"] = metrics;
  write();
  if (!writes_) return;
  std::string line;
  for (auto& [k, v] : metrics.items()) {
    char buf[64];
    snprintf(buf, sizeof buf, "%s %.4g", k.c_str(), v.get<double>());
    line += (line.empty() ? "" : ", ") + std::string(buf);
  }
  fprintf(stderr, "grpo train: stage '%s' done%s%s\n", record_["stages"][i]["name"].get<std::string>().c_str(),
          line.empty() ? "" : ": ", line.c_str());
}

void Pipeline::write() const {
  if (writes_) write_file_atomic(path_, record_.dump(2) + "\n");
}

json final_metrics(const std::string& stage_dir) {
  json out = json::object();
  const std::string path = stage_dir + "/metrics.jsonl";
  if (!file_exists(path)) return out;
  for_each_jsonl_object(path, [&](const json& m, const std::string&) {
    for (const char* k : {"loss", "eval_loss", "reward", "accuracy", "eval_accuracy", "eval_reward", "kept_fraction"})
      if (m.contains(k) && m[k].is_number()) out[k] = m[k];
  });
  return out;
}

}  // namespace grpo::trainer

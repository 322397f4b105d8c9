// `grpo reward` (score a JSONL file, in process or through workers) and `grpo reward-worker`.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "rewards/builtin.h"
#include "rewards/plugin.h"
#include "rewards/rpc.h"
#include "sandbox/sandbox.h"
#include "trainer/reward_model_reward.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"
#include "util/jsonl.h"
#include "util/strings.h"

namespace grpo::cli {

using json = nlohmann::json;
using namespace grpo::rewards;

namespace {

json parse_options(const std::string& text) {
  if (text.empty()) return json::object();
  try {
    json o = parse_json(text, "--options");
    if (!o.is_object()) throw Error("--options must be a JSON object, e.g. {\"math\": {\"precision\": 4}}");
    return o;
  } catch (const json::exception& e) {
    throw Error(std::string("--options: not valid JSON: ") + e.what());
  }
}

std::string field(const json& row, const char* key, const std::string& where, bool required) {
  if (!row.contains(key) || row[key].is_null()) {
    if (required) throw Error(where + ": missing field '" + key + "'");
    return "";
  }
  if (!row[key].is_string()) throw Error(where + ": field '" + std::string(key) + "' must be a string");
  return row[key].get<std::string>();
}

// Code rewards run programs in the sandbox: say once what isolation this host gives them.
void announce_sandbox(const std::string& spec) {
  if (spec.find("code") == std::string::npos) return;
  const auto& iso = grpo::sandbox::probe();
  fprintf(stderr, "grpo: %s%s\n", iso.summary().c_str(),
          iso.complete() ? "" : " (code rewards refuse to run unless {\"code\": {\"allow_weaker_isolation\": true}})");
}

}  // namespace

int run_reward(const RewardArgs& a) {
  RewardRegistry& registry = default_registry();
  trainer::register_reward_model_reward(registry);
  for (const auto& p : a.plugins) load_reward_plugin(p, registry);
  std::vector<RewardItem> items;
  for_each_jsonl_object(a.input, [&](const json& row, const std::string& where) {
    RewardItem it;
    it.completion = field(row, "completion", where, true);
    it.reference = field(row, "reference", where, false);
    it.prompt = field(row, "prompt", where, false);
    if (row.contains("metadata") && !row["metadata"].is_null()) {
      if (!row["metadata"].is_object()) throw Error(where + ": field 'metadata' must be an object");
      it.metadata = row["metadata"];
    }
    items.push_back(std::move(it));
  });
  if (a.workers.empty()) announce_sandbox(a.name);
  auto t0 = std::chrono::steady_clock::now();
  std::unique_ptr<Scorer> scorer;
  if (!a.workers.empty()) {
    ClientOptions o;
    o.spec = a.name;
    o.timeout_seconds = a.timeout;
    o.security = to_security(a.security);
    scorer = std::make_unique<RewardClient>(split_list(a.workers), o);
  } else {
    scorer = std::make_unique<LocalScorer>(std::make_shared<CombinedReward>(a.name, registry, parse_options(a.options)),
                                           a.threads);
  }
  auto results = scorer->score(items);
  double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string out;
  double total = 0;
  int errors = 0;
  for (const auto& r : results) {
    json row = {{"reward", r.reward}, {"components", r.components}, {"error", nullptr}};
    if (!r.error.empty()) {
      row["error"] = r.error;
      ++errors;
    }
    total += r.reward;
    out += row.dump() + "\n";
  }
  write_file_atomic(a.output, out);
  fprintf(stderr, "grpo reward: %zu items, mean reward %.4f, %d errors, %.3f s (%.0f items/s) -> %s\n", results.size(),
          results.empty() ? 0.0 : total / results.size(), errors, sec, results.size() / std::max(sec, 1e-9),
          a.output.c_str());
  return 0;
}

int run_reward_worker(const RewardWorkerArgs& a) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  RewardRegistry& registry = default_registry();
  for (const auto& p : a.plugins) load_reward_plugin(p, registry);
  trainer::register_reward_model_reward(registry);
  std::string spec = a.rewards;
  nlohmann::json options = parse_options(a.options);
  if (!a.reward_model.empty()) {
    if (!a.rewards_given) spec = "reward_model";
    bool named = false;
    for (const auto& part : split_list(spec)) named |= part.substr(0, part.find(':')) == "reward_model";
    if (!named) throw Error("--reward-model: add reward_model to --rewards (e.g. --rewards " + spec + ",reward_model)");
    if (!options.contains("reward_model")) options["reward_model"] = nlohmann::json::object();
    options["reward_model"]["path"] = a.reward_model;
    options["reward_model"]["device"] = a.reward_model_device;
    // Loaded now, so that a bad directory fails here and the first call does not wait for it.
    registry.make("reward_model", options["reward_model"])->score({"", "", "", nlohmann::json::object()});
  }
  announce_sandbox(spec);
  WorkerOptions o;
  o.host = a.host;
  o.port = a.port;
  o.threads = a.threads;
  o.default_spec = spec;
  o.reward_options = options;
  o.security = to_security(a.security);
  RewardWorker worker(registry, o);
  fprintf(stderr, "grpo reward-worker: listening on %s:%d (rewards %s, %d threads)\n", a.host.c_str(), worker.port(),
          spec.c_str(), a.threads);
  if (!a.port_file.empty()) write_file_atomic(a.port_file, std::to_string(worker.port()) + "\n");
  int sig = 0;
  sigwait(&set, &sig);
  fprintf(stderr, "grpo reward-worker: %s, shutting down\n", sig == SIGINT ? "interrupted" : "terminated");
  worker.shutdown();
  return 0;
}

}  // namespace grpo::cli

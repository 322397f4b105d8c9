#include "trainer/grpo_trainer.h"

#include <ATen/Context.h>
#include <c10/core/GradMode.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "model/checkpoint.h"
#include "rewards/builtin.h"
#include "rewards/rpc.h"
#include "rollout/engine.h"
#include "rollout/service.h"
#include "text/tokenizer.h"
#include "text/unicode.h"
#include "trainer/grpo_loss.h"
#include "trainer/tensorboard.h"
#include "util/error.h"
#include "util/files.h"
#include "util/jsonl.h"
#include "util/strings.h"

namespace grpo::trainer {

using at::Tensor;
using json = nlohmann::json;

namespace {

const char* kR1ZeroTemplate =
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. "
    "Assistant:";

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// ---------------------------------------------------------------------------------------------
// Recipe reading: every key checked, errors name the file and the key.
template <typename T>
void read(const YAML::Node& root, const std::string& file, const char* key, T& out, std::set<std::string>& seen) {
  seen.insert(key);
  if (!root[key]) return;
  try {
    out = root[key].as<T>();
  } catch (const YAML::Exception& e) {
    throw Error(file + ": key '" + key + "': " + e.msg);
  }
}

// ---------------------------------------------------------------------------------------------
// A byte-level tokenizer (256 byte tokens, <s> = 256, </s> = 257) for the built-in tasks.
std::string byte_tokenizer_json() {
  json vocab = json::object();
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    int cp = printable ? b : 256 + n++;
    std::string s;
    text::utf8_append(s, cp);
    vocab[s] = b;
  }
  json added = json::array();
  for (int i = 0; i < 2; ++i)
    added.push_back({{"id", 256 + i}, {"content", i == 0 ? "<s>" : "</s>"}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  json tok = {{"version", "1.0"},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  return tok.dump();
}

struct Example {
  std::string prompt, answer;
};

std::vector<Example> addition(int digits, int64_t count, uint64_t seed, std::set<std::pair<int64_t, int64_t>>* avoid,
                              std::set<std::pair<int64_t, int64_t>>* used) {
  std::mt19937_64 rng(seed);
  int64_t hi = 1;
  for (int d = 0; d < digits; ++d) hi *= 10;
  std::vector<Example> out;
  for (int64_t tries = 0; (int64_t)out.size() < count && tries < count * 50; ++tries) {
    int64_t a = rng() % hi, b = rng() % hi;
    if (avoid && avoid->count({a, b})) continue;
    if (used) {
      if (used->count({a, b})) continue;
      used->insert({a, b});
    }
    out.push_back({std::to_string(a) + "+" + std::to_string(b) + "=", std::to_string(a + b)});
  }
  return out;
}

std::vector<Example> read_examples(const Recipe& r, const std::string& file) {
  std::vector<Example> out;
  std::vector<std::string> bad;  // where, for the first 10
  int64_t bad_rows = 0;
  for_each_jsonl_object(file, [&](const json& row, const std::string& where) {
    bool ok = row.contains(r.prompt_field) && row[r.prompt_field].is_string() && row.contains(r.answer_field);
    std::string answer;
    if (ok) {
      const json& ans = row[r.answer_field];
      answer = ans.is_string() ? ans.get<std::string>() : ans.dump();
      if (!r.answer_delimiter.empty()) {
        size_t at = answer.rfind(r.answer_delimiter);
        ok = at != std::string::npos;
        if (ok) answer = answer.substr(at + r.answer_delimiter.size());
        answer.erase(0, answer.find_first_not_of(" \t\n"));
        answer.erase(answer.find_last_not_of(" \t\n") + 1);
        ok = ok && !answer.empty();
      }
    }
    if (!ok) {
      if (++bad_rows <= 10) bad.push_back(where);
      return;
    }
    out.push_back({row[r.prompt_field].get<std::string>(), answer});
  });
  const std::string needs = "'" + r.prompt_field + "' (text) and '" + r.answer_field + "'" +
                            (r.answer_delimiter.empty() ? "" : " with an answer after '" + r.answer_delimiter + "'");
  if (bad_rows > 0) {
    std::string where;
    for (auto& b : bad) where += (where.empty() ? "" : ", ") + b;
    fprintf(stderr, "grpo train: %lld row%s of %s lack%s %s and %s skipped (%s%s)\n", (long long)bad_rows,
            bad_rows == 1 ? "" : "s", file.c_str(), bad_rows == 1 ? "s" : "", needs.c_str(), bad_rows == 1 ? "is" : "are",
            where.c_str(), bad_rows > 10 ? ", ..." : "");
  }
  if (out.empty()) throw Error(file + ": no usable rows (each needs " + needs + ")");
  return out;
}

std::string apply_template(const Recipe& r, const std::string& prompt) {
  std::string t = r.prompt_template == "r1_zero" ? kR1ZeroTemplate : r.prompt_template;
  size_t p = t.find("{prompt}");
  if (p == std::string::npos) return t + prompt;
  return t.substr(0, p) + prompt + t.substr(p + 8);
}

// Pads per-sequence vectors (1-D tensors) into (B, T) and a mask.
std::pair<Tensor, Tensor> pad(const std::vector<Tensor>& rows, int64_t T, at::ScalarType dtype) {
  std::vector<Tensor> padded, masks;
  for (const auto& r : rows) {
    int64_t n = r.size(0);
    padded.push_back(at::constant_pad_nd(r.to(dtype), {0, T - n}, 0));
    masks.push_back(at::cat({at::ones({n}, r.options().dtype(dtype)), at::zeros({T - n}, r.options().dtype(dtype))}));
  }
  return {at::stack(padded), at::stack(masks)};
}

struct State {
  int64_t step = 0;        // GRPO steps done
  int64_t cursor = 0;      // next training example
  bool sft_done = false;
  int64_t sft_step = 0;    // warm-start steps done (while !sft_done)
};

}  // namespace

// ---------------------------------------------------------------------------------------------
Recipe load_recipe(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    throw Error(path + ": cannot open");
  } catch (const YAML::Exception& e) {
    throw Error(path + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap()) throw Error(path + ": expected a mapping of settings");
  Recipe r;
  r.path = path;
  std::set<std::string> seen;
#define R(key) read(root, path, #key, r.key, seen)
  R(model_dir); R(model_config); R(model_seed); R(device); R(bf16); R(tokenizer); R(task); R(task_digits); R(train_size); R(eval_size);
  R(data_seed); R(train_file); R(eval_file); R(prompt_field); R(answer_field); R(answer_delimiter); R(prompt_template); R(rewards); R(reward_workers);
  R(sft_steps); R(sft_batch_size); R(sft_learning_rate); R(max_steps); R(per_step_prompts); R(num_generations);
  R(max_completion_length); R(temperature); R(top_p); R(learning_rate); R(beta); R(epsilon); R(epsilon_high);
  R(weight_decay); R(max_grad_norm); R(warmup_ratio); R(lr_scheduler_type); R(loss_type); R(kl_estimator);
  R(num_iterations); R(mini_batch_size); R(recompute_old_logprobs); R(max_num_gen_batches); R(ref_model_sync_steps); R(bias_update_speed);
  R(aux_loss_alpha); R(scale_rewards); R(mask_truncated_completions); R(dynamic_sampling); R(eval_every);
  R(eval_num_generations); R(save_every); R(logging_steps); R(seed);
#undef R
  if (root["epsilon"] && !root["epsilon_high"]) r.epsilon_high = r.epsilon;
  std::set<std::string> given;
  for (auto it = root.begin(); it != root.end(); ++it) {
    std::string k = it->first.as<std::string>();
    if (!seen.count(k)) throw Error(path + ": unknown key '" + k + "'");
    if (!given.insert(k).second) throw Error(path + ": key '" + k + "' is given twice");
  }
  auto need = [&](bool ok, const std::string& key, const std::string& what) {
    if (!ok) throw Error(path + ": key '" + key + "': " + what);
  };
  need(!r.model_dir.empty() || !r.model_config.empty(), "model_dir", "give model_dir (HF checkpoint) or model_config");
  need(r.num_generations >= 2, "num_generations", "must be at least 2 (advantages compare samples of a prompt)");
  need(r.per_step_prompts >= 1, "per_step_prompts", "must be at least 1");
  need(r.max_completion_length >= 1, "max_completion_length", "must be at least 1");
  need(r.learning_rate > 0, "learning_rate", "must be positive");
  need(r.temperature > 0, "temperature", "must be positive for sampling");
  need(r.num_iterations >= 1, "num_iterations", "must be at least 1");
  need(r.task == "addition" || r.task == "jsonl", "task", "expected addition or jsonl");
  need(r.task != "jsonl" || !r.train_file.empty(), "train_file", "task jsonl needs train_file");
  if (r.scale_rewards == "true") r.scale_rewards = "group";
  if (r.scale_rewards == "false") r.scale_rewards = "none";
  need(r.scale_rewards == "group" || r.scale_rewards == "batch" || r.scale_rewards == "none", "scale_rewards",
       "expected group, batch or none");
  need(r.max_num_gen_batches >= 1, "max_num_gen_batches", "must be at least 1");
  need(r.aux_loss_alpha >= 0, "aux_loss_alpha", "must not be negative");
  need(r.eval_num_generations >= 0, "eval_num_generations", "must not be negative");
  need(r.mini_batch_size >= 0, "mini_batch_size", "must not be negative");
  try {
    at::Device d(r.device);
    need(d.is_cpu() || d.is_cuda(), "device", "expected cpu, cuda or cuda:N");
  } catch (const c10::Error&) {
    need(false, "device", "'" + r.device + "' is not a device (cpu, cuda or cuda:N)");
  }
  need(r.lr_scheduler_type == "constant" || r.lr_scheduler_type == "cosine", "lr_scheduler_type", "constant or cosine");
  try {
    parse_loss_type(r.loss_type);
    parse_kl_estimator(r.kl_estimator);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
  return r;
}


// ---------------------------------------------------------------------------------------------
namespace {

using Model = model::DeepseekForCausalLM;

// The `math` component when the recipe has one (the task's correctness), else the whole reward.
double accuracy_of(const rewards::RewardResult& res) {
  auto it = res.components.find("math");
  return it != res.components.end() ? it->second : res.reward;
}

std::vector<model::MoE> moe_layers(Model& m) {
  std::vector<model::MoE> out;
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l) {
    auto layer = m.model->layers[l]->as<model::DecoderLayer>();
    if (layer->moe) out.push_back(layer->moe);
  }
  return out;
}

// The torch generators (CPU, and the device's when on CUDA), saved with each checkpoint.
std::vector<at::Generator> generators(at::Device device) {
  std::vector<at::Generator> g = {at::globalContext().defaultGenerator(at::kCPU)};
  if (device.is_cuda()) g.push_back(at::globalContext().defaultGenerator(device));
  return g;
}

struct EvalResult {
  double accuracy = NAN, reward = NAN;  // greedy, one completion per prompt
  // k samples per prompt at the recipe's temperature (eval_num_generations > 0)
  double sampled_accuracy = NAN, sampled_reward = NAN, pass_at_k = NAN;
  void add_to(json& m) const {
    m["eval_accuracy"] = accuracy;
    m["eval_reward"] = reward;
    if (!std::isnan(sampled_reward)) {
      m["eval_sampled_accuracy"] = sampled_accuracy;
      m["eval_sampled_reward"] = sampled_reward;
      m["eval_pass_at_k"] = pass_at_k;
    }
  }
  std::string describe() const {
    char buf[160];
    snprintf(buf, sizeof buf, "eval accuracy %.3f, reward %.3f", accuracy, reward);
    std::string s = buf;
    if (!std::isnan(sampled_reward)) {
      snprintf(buf, sizeof buf, "; sampled: accuracy %.3f, reward %.3f, pass@k %.3f", sampled_accuracy, sampled_reward,
               pass_at_k);
      s += buf;
    }
    return s;
  }
};

// One step's training data: the kept groups' sequences, and statistics over every sample drawn.
struct RolloutBatch {
  std::vector<std::vector<int64_t>> prompts, completions;  // non-empty completions of kept groups
  std::vector<Tensor> old_logp;                            // (C_i) fp32 on the device: pi_old
  std::vector<double> advantages;
  std::vector<double> rewards;  // every sampled completion
  std::map<std::string, double> component_sums;
  double accuracy_sum = 0, length_sum = 0;
  int64_t truncated = 0, reward_errors = 0, groups = 0, zero_std_groups = 0, kept_groups = 0, gen_batches = 0;
  int64_t length_max = 0, tokens = 0;
  double time_rollout = 0, time_reward = 0;  // seconds
};

struct UpdateStats {
  double loss = 0, clip_fraction = 0, kl = 0, aux_loss = 0, expert_spread = 0;
  // Mean |log pi_train - log pi_rollout| per token before the first update: how far the training
  // forward is from the engine's sampling-time log-probs (bf16 kernels differ; 0 up to fp32 noise).
  double rollout_logprob_diff = 0;
};

class Trainer {
 public:
  Trainer(const Recipe& r, const TrainOptions& opt);
  void run();

 private:
  void resume();
  void save(const std::string& name);
  void build_reference();
  void warm_start();
  EvalResult evaluate();
  RolloutBatch sample(int64_t step);
  UpdateStats update(const RolloutBatch& batch);
  double balance_experts(const std::vector<Tensor>& loads);
  std::vector<rewards::RewardResult> score(const std::vector<rewards::RewardItem>& items, const std::string& what);
  void accumulate_gradients();
  void sync_policy();
  void write_metrics(const json& m, int64_t step);
  json state_json() const;
  std::vector<int64_t> encode(const std::string& s, bool special) const;
  rollout::Request request(const Example& ex, int64_t index) const;

  const Recipe& r_;
  std::string out_, config_text_, resumed_from_;
  at::Device device_;
  at::ScalarType compute_dtype_;
  std::shared_ptr<Model> master_;  // fp32 weights: what the optimizer updates and checkpoints hold
  std::shared_ptr<Model> policy_;  // what computes: master_ itself in fp32, a bf16 copy with bf16
  std::shared_ptr<Model> ref_;     // frozen reference (beta > 0), in the compute dtype
  std::shared_ptr<const text::Tokenizer> tok_;
  int64_t eos_ = -1;
  std::vector<Example> train_set_, eval_set_;
  std::unique_ptr<rewards::Scorer> scorer_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;      // GRPO
  std::unique_ptr<torch::optim::AdamW> sft_optimizer_;  // the warm start; checkpoints hold the active one
  std::mt19937_64 sft_rng_;                             // the warm start's example draws
  std::unique_ptr<rollout::Engine> engine_;
  State st_;
  std::ofstream metrics_;
  std::unique_ptr<EventWriter> tensorboard_;
  const bool tty_ = ::isatty(2);
};

Trainer::Trainer(const Recipe& r, const TrainOptions& opt)
    : r_(r),
      out_(opt.output_dir.empty() ? "runs/" + r.path.substr(r.path.find_last_of('/') + 1) : opt.output_dir),
      device_(r.device),
      compute_dtype_(r.bf16 ? at::kBFloat16 : at::kFloat) {
  make_directories(out_);
  torch::manual_seed(r.seed);

  // Model: fp32 master weights, and a bf16 compute copy when asked.
  if (!r.model_dir.empty()) {
    master_ = model::load_model(r.model_dir, {at::kFloat, device_});
    config_text_ = read_file(r.model_dir + "/config.json");
  } else {
    config_text_ = read_file(r.model_config);
    master_ = std::make_shared<Model>(parse_model_config(config_text_, r.model_config));
    model::init_weights(*master_, r.model_seed);
    master_->to_device_dtype(device_, at::kFloat);
  }
  policy_ = master_;
  if (r.bf16) {
    policy_ = std::make_shared<Model>(master_->config());
    policy_->to_device_dtype(device_, at::kBFloat16);
  }

  // Tokenizer and eos.
  if (r.tokenizer == "builtin:bytes")
    tok_ = std::make_shared<const text::Tokenizer>(text::Tokenizer::from_json(byte_tokenizer_json(), "builtin:bytes"));
  else
    tok_ = std::make_shared<const text::Tokenizer>(
        text::Tokenizer::load(r.tokenizer.empty() ? r.model_dir + "/tokenizer.json" : r.tokenizer));
  if (auto id = tok_->token_to_id("</s>")) eos_ = *id;
  if (master_->config().eos_token_id) eos_ = *master_->config().eos_token_id;
  if (eos_ < 0 || eos_ >= master_->config().vocab_size) throw Error(r.path + ": no usable eos token id (set eos_token_id)");

  // Data: the built-in task keeps its eval problems out of the training set.
  if (r.task == "addition") {
    std::set<std::pair<int64_t, int64_t>> eval_pairs, train_pairs;
    eval_set_ = addition(r.task_digits, r.eval_size, r.data_seed + 7777, nullptr, &eval_pairs);
    train_set_ = addition(r.task_digits, r.train_size, r.data_seed, &eval_pairs, &train_pairs);
  } else {
    train_set_ = read_examples(r, r.train_file);
    if (!r.eval_file.empty()) eval_set_ = read_examples(r, r.eval_file);
  }

  // Rewards: in process, or through reward workers.
  if (!r.reward_workers.empty()) {
    rewards::ClientOptions co;
    co.spec = r.rewards;
    scorer_ = std::make_unique<rewards::RewardClient>(split_list(r.reward_workers), co);
  } else {
    scorer_ = std::make_unique<rewards::LocalScorer>(
        std::make_shared<rewards::CombinedReward>(r.rewards, rewards::default_registry()), 1);
  }

  optimizer_ = std::make_unique<torch::optim::AdamW>(
      master_->parameters(), torch::optim::AdamWOptions(r.learning_rate).weight_decay(r.weight_decay).betas({0.9, 0.99}));
  sft_optimizer_ = std::make_unique<torch::optim::AdamW>(
      master_->parameters(), torch::optim::AdamWOptions(r.sft_learning_rate).weight_decay(0.0));
  sft_rng_.seed(r.seed + 17);
  if (opt.resume) resume();
  sync_policy();

  rollout::EngineOptions eo;
  eo.max_batch = std::max<int64_t>(64, r.per_step_prompts * r.num_generations);
  // The optimizer's moments are allocated at the first step: leave them the memory.
  eo.kv_cache_bytes = int64_t(device_.is_cuda() ? 4 : 1) << 30;
  engine_ = std::make_unique<rollout::Engine>(policy_, tok_.get(), eo);

  metrics_.open(out_ + "/metrics.jsonl", std::ios::app);
  tensorboard_ = std::make_unique<EventWriter>(out_);  // `tensorboard --logdir OUT` shows every numeric metric
}

std::vector<int64_t> Trainer::encode(const std::string& s, bool special) const {
  std::vector<int64_t> ids;
  for (int32_t t : tok_->encode(s, special)) ids.push_back(t);
  return ids;
}

rollout::Request Trainer::request(const Example& ex, int64_t index) const {
  rollout::Request q;
  q.prompt_index = index;
  q.prompt_ids = encode(apply_template(r_, ex.prompt), true);
  q.params.max_new_tokens = r_.max_completion_length;
  q.params.stop_token_ids = {eos_};
  return q;
}

// ---- mixed precision: gradients of the bf16 copy are summed into fp32 master gradients after
// every backward (so accumulation over mini-batches happens in fp32); after each optimizer step
// the master weights are rounded back into the copy. Both are no-ops in fp32.
void Trainer::accumulate_gradients() {
  if (policy_ == master_) return;
  c10::NoGradGuard g;
  auto master = master_->parameters(), compute = policy_->parameters();
  for (size_t i = 0; i < master.size(); ++i) {
    const Tensor& grad = compute[i].grad();
    if (!grad.defined()) continue;
    if (master[i].grad().defined()) master[i].mutable_grad().add_(grad.to(at::kFloat));
    else master[i].mutable_grad() = grad.to(at::kFloat);
  }
  policy_->zero_grad();
}

void Trainer::sync_policy() {
  if (policy_ != master_) rollout::copy_weights(*policy_, *master_);
}

// ---- checkpoints: an HF directory of the fp32 weights plus optimizer moments, RNG states and the
// trainer state (step, data cursor), written to NAME.tmp and renamed; `latest` names the newest.
json Trainer::state_json() const {
  json s = {{"step", st_.step}, {"cursor", st_.cursor}, {"sft_done", st_.sft_done}, {"sft_step", st_.sft_step},
            {"recipe", r_.path}};
  if (!st_.sft_done) {
    std::ostringstream rng;
    rng << sft_rng_;
    s["sft_rng"] = rng.str();
  }
  return s;
}

void Trainer::save(const std::string& name) {
  std::string dir = out_ + "/" + name, tmp = dir + ".tmp";
  std::string cmd = "rm -rf '" + tmp + "'";
  if (std::system(cmd.c_str()) != 0) throw Error("cannot clear " + tmp);
  make_directories(tmp);
  model::save_model(*master_, config_text_, tmp, {at::kFloat});
  torch::save(st_.sft_done ? *optimizer_ : *sft_optimizer_, tmp + "/optimizer.pt");
  std::vector<Tensor> rng;
  for (auto& g : generators(device_)) {
    std::lock_guard<std::mutex> lock(g.mutex());
    rng.push_back(g.get_state());
  }
  torch::save(rng, tmp + "/rng_state.pt");
  // A reference refreshed during the run is part of the state (it is no longer the start policy).
  if (ref_ && r_.ref_model_sync_steps > 0 && st_.step >= r_.ref_model_sync_steps)
    model::save_model(*ref_, config_text_, tmp + "/reference", {at::kFloat});
  write_file_atomic(tmp + "/trainer_state.json",
                    state_json().dump(2));
  std::string swap = "rm -rf '" + dir + "' && mv '" + tmp + "' '" + dir + "'";
  if (std::system(swap.c_str()) != 0) throw Error("cannot move " + tmp + " to " + dir);
  write_file_atomic(out_ + "/latest", name + "\n");
}

void Trainer::resume() {
  const std::string latest = out_ + "/latest";
  if (!file_exists(latest)) {
    fprintf(stderr, "grpo train: --resume: no checkpoint in %s yet; starting from the beginning\n", out_.c_str());
    return;
  }
  std::string name = read_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  resumed_from_ = out_ + "/" + name;
  auto saved = model::load_model(resumed_from_, {at::kFloat, at::kCPU});  // copied onto the policy's device
  rollout::copy_weights(*master_, *saved);

  if (file_exists(resumed_from_ + "/rng_state.pt")) {
    std::vector<Tensor> rng;
    torch::load(rng, resumed_from_ + "/rng_state.pt");
    auto gens = generators(device_);
    for (size_t i = 0; i < gens.size() && i < rng.size(); ++i) {
      std::lock_guard<std::mutex> lock(gens[i].mutex());
      gens[i].set_state(rng[i]);
    }
  }
  json s;
  try {
    s = json::parse(read_file(resumed_from_ + "/trainer_state.json"));
    st_.step = s.at("step");
    st_.cursor = s.at("cursor");
    st_.sft_done = s.at("sft_done");
    st_.sft_step = s.value("sft_step", int64_t(0));
    if (s.contains("sft_rng")) std::istringstream(s["sft_rng"].get<std::string>()) >> sft_rng_;
  } catch (const json::exception& e) {
    throw Error(resumed_from_ + "/trainer_state.json: " + e.what());
  }
  torch::load(st_.sft_done ? *optimizer_ : *sft_optimizer_, resumed_from_ + "/optimizer.pt");
  if (st_.sft_done)
    fprintf(stderr, "grpo train: resumed from %s (step %lld)\n", resumed_from_.c_str(), (long long)st_.step);
  else
    fprintf(stderr, "grpo train: resumed from %s (warm start step %lld)\n", resumed_from_.c_str(), (long long)st_.sft_step);
}

// ---- the frozen reference (beta > 0): the policy as GRPO starts, or as of the last refresh.
void Trainer::build_reference() {
  if (r_.beta == 0) return;
  const model::LoadOptions lo{compute_dtype_, device_};
  if (st_.step == 0) {
    ref_ = std::make_shared<Model>(policy_->config());
    ref_->to_device_dtype(device_, compute_dtype_);
    rollout::copy_weights(*ref_, *policy_);
  } else if (!resumed_from_.empty() && is_directory(resumed_from_ + "/reference")) {
    ref_ = model::load_model(resumed_from_ + "/reference", lo);
  } else if (is_directory(out_ + "/checkpoint-0")) {  // after the warm start
    ref_ = model::load_model(out_ + "/checkpoint-0", lo);
  } else if (!r_.model_dir.empty()) {
    ref_ = model::load_model(r_.model_dir, lo);
  } else {  // a random start is deterministic
    ref_ = std::make_shared<Model>(policy_->config());
    model::init_weights(*ref_, r_.model_seed);
    ref_->to_device_dtype(device_, compute_dtype_);
  }
  for (auto& p : ref_->parameters()) p.set_requires_grad(false);
}

// ---- rewards, retried: a worker that fails is retried by the client; when the whole call fails
// three times, or every item comes back with an error, the run stops rather than train on zeros.
std::vector<rewards::RewardResult> Trainer::score(const std::vector<rewards::RewardItem>& items,
                                                  const std::string& what) {
  std::vector<rewards::RewardResult> results;
  for (int attempt = 0;; ++attempt) {
    try {
      results = scorer_->score(items);
      break;
    } catch (const Error& e) {
      if (attempt == 2) throw Error(what + ": rewards failed three times: " + e.what());
      fprintf(stderr, "\ngrpo train: %s: rewards failed (%s); retrying\n", what.c_str(), e.what());
      std::this_thread::sleep_for(std::chrono::seconds(2 << attempt));
    }
  }
  size_t errors = 0;
  for (const auto& res : results) errors += !res.error.empty();
  if (!results.empty() && errors == results.size())
    throw Error("every reward of " + what + " failed (first: " + results[0].error +
                "); not training on silent zero rewards");
  return results;
}

// ---- evaluation on the held-out split: greedy pass@1 and mean reward; with k samples per prompt
// (fixed seed, the recipe's temperature) also their mean reward, mean accuracy and pass@k.
EvalResult Trainer::evaluate() {
  EvalResult e;
  if (eval_set_.empty()) return e;
  std::vector<rollout::Request> reqs;
  for (size_t i = 0; i < eval_set_.size(); ++i) {
    reqs.push_back(request(eval_set_[i], (int64_t)i));
    reqs.back().params.temperature = 0;
  }
  auto run = [&](int64_t n) {
    auto cs = engine_->generate(reqs);
    std::vector<rewards::RewardItem> items;
    for (const auto& c : cs) {
      rewards::RewardItem it;
      it.prompt = eval_set_[c.prompt_index].prompt;
      it.completion = c.text;
      it.reference = eval_set_[c.prompt_index].answer;
      items.push_back(it);
    }
    auto results = score(items, "eval");
    double acc = 0, rew = 0, pass = 0;
    for (size_t p = 0; p < eval_set_.size(); ++p) {
      double best = 0;
      for (int64_t j = 0; j < n; ++j) {
        const auto& res = results[p * n + j];
        acc += accuracy_of(res);
        rew += res.reward;
        best = std::max(best, accuracy_of(res));
      }
      pass += best;
    }
    const double N = (double)results.size();
    return std::array<double, 3>{acc / N, rew / N, pass / eval_set_.size()};
  };
  auto greedy = run(1);
  e.accuracy = greedy[0];
  e.reward = greedy[1];
  if (r_.eval_num_generations > 0) {
    for (auto& q : reqs) {
      q.params.n = r_.eval_num_generations;
      q.params.temperature = r_.temperature;
      q.params.top_p = r_.top_p;
      q.params.seed = r_.seed * 1000003 + 999999937;  // the same draws at every evaluation
    }
    auto sampled = run(r_.eval_num_generations);
    e.sampled_accuracy = sampled[0];
    e.sampled_reward = sampled[1];
    e.pass_at_k = sampled[2];
  }
  return e;
}

void Trainer::write_metrics(const json& m, int64_t step) {
  metrics_ << m.dump() << "\n";
  metrics_.flush();
  for (const auto& [k, v] : m.items())
    if (v.is_number() && k != "step") tensorboard_->scalar(k, v.get<double>(), step);
  tensorboard_->flush();
}

// ---- warm start: supervised steps on prompt -> answer </s>, to make a weak base from scratch.
void Trainer::warm_start() {
  torch::optim::AdamW& sft = *sft_optimizer_;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t s = st_.sft_step; s < r_.sft_steps; ++s) {
    std::vector<std::vector<int64_t>> ps, cs;
    for (int64_t b = 0; b < r_.sft_batch_size; ++b) {
      const auto& ex = train_set_[sft_rng_() % train_set_.size()];
      ps.push_back(encode(apply_template(r_, ex.prompt), true));
      auto c = encode(ex.answer, false);
      c.push_back(eos_);
      cs.push_back(c);
    }
    sft.zero_grad();
    Tensor loss = -at::cat(policy_->completion_logprobs(ps, cs)).mean();
    loss.backward();
    accumulate_gradients();
    torch::nn::utils::clip_grad_norm_(master_->parameters(), r_.max_grad_norm);
    sft.step();
    sync_policy();
    if (tty_ && (s % 10 == 0 || s + 1 == r_.sft_steps))
      fprintf(stderr, "\rgrpo train: warm start %lld/%lld  loss %.4f  %.0f s", (long long)s + 1, (long long)r_.sft_steps,
              loss.item<double>(), seconds_since(t0));
    st_.sft_step = s + 1;
    // Progress checkpoints of the warm start go to one directory, replaced each time.
    if (r_.save_every > 0 && st_.sft_step % r_.save_every == 0 && st_.sft_step < r_.sft_steps) save("warm-start");
  }
  if (tty_) fprintf(stderr, "\n");
  st_.sft_done = true;
  EvalResult e = evaluate();
  fprintf(stderr, "grpo train: after the warm start (%lld steps, %.0f s): %s\n", (long long)r_.sft_steps,
          seconds_since(t0), e.describe().c_str());
  json m = {{"step", 0}, {"phase", "warm_start"}};
  e.add_to(m);
  write_metrics(m, 0);
  save("checkpoint-0");
  std::string cmd = "rm -rf '" + out_ + "/warm-start'";  // superseded by checkpoint-0
  if (std::system(cmd.c_str()) != 0) fprintf(stderr, "grpo train: could not remove %s/warm-start\n", out_.c_str());
}

// ---- rollout: G completions for each of per_step_prompts prompts, scored, with group-normalised
// advantages. Dynamic sampling (DAPO) drops groups whose rewards are all equal (they carry no
// signal) and samples further prompts, up to max_num_gen_batches batches, to refill the step.
RolloutBatch Trainer::sample(int64_t step) {
  RolloutBatch b;
  const int64_t G = r_.num_generations, n = r_.per_step_prompts;
  AdvantageConfig ac;
  ac.scale_rewards = r_.scale_rewards != "none";
  ac.batch_std = r_.scale_rewards == "batch";  // over each rollout batch
  for (int64_t round = 0; round < r_.max_num_gen_batches; ++round) {
    std::vector<rollout::Request> reqs;
    std::vector<const Example*> examples;
    for (int64_t i = 0; i < n; ++i) {
      examples.push_back(&train_set_[(st_.cursor + i) % train_set_.size()]);
      // prompt_index feeds the random streams: later rounds draw fresh ones.
      rollout::Request q = request(*examples.back(), round * n + i);
      q.params.n = G;
      q.params.temperature = r_.temperature;
      q.params.top_p = r_.top_p;
      q.params.seed = r_.seed * 1000003 + step;
      reqs.push_back(q);
    }
    st_.cursor = (st_.cursor + n) % (int64_t)train_set_.size();
    engine_->weight_version = step;
    auto t0 = std::chrono::steady_clock::now();
    auto comps = engine_->generate(reqs);
    b.time_rollout += seconds_since(t0);
    ++b.gen_batches;

    std::vector<rewards::RewardItem> items;
    for (const auto& c : comps) {
      rewards::RewardItem it;
      it.prompt = examples[c.prompt_index - round * n]->prompt;
      it.completion = c.text;
      it.reference = examples[c.prompt_index - round * n]->answer;
      it.metadata = {{"completion_tokens", c.token_ids.size()}};
      items.push_back(it);
    }
    t0 = std::chrono::steady_clock::now();
    auto results = score(items, "step " + std::to_string(step));
    b.time_reward += seconds_since(t0);
    std::vector<double> rw(results.size());
    for (size_t i = 0; i < results.size(); ++i) {
      const auto& res = results[i];
      rw[i] = res.reward;
      b.rewards.push_back(res.reward);
      b.accuracy_sum += accuracy_of(res);
      b.reward_errors += !res.error.empty();
      for (const auto& [name, v] : res.components) b.component_sums[name] += v;
      const auto& c = comps[i];
      b.truncated += c.finish_reason == rollout::FinishReason::Length;
      b.length_sum += (double)c.token_ids.size();
      b.length_max = std::max<int64_t>(b.length_max, c.token_ids.size());
    }
    Tensor rewards_t = at::tensor(rw, at::kFloat);
    Tensor adv = group_advantages(rewards_t, G, ac);
    Tensor group_std = rewards_t.view({-1, G}).std(1);
    auto adv_a = adv.accessor<float, 1>();
    auto std_a = group_std.accessor<float, 1>();
    for (int64_t g = 0; g < n; ++g) {
      ++b.groups;
      const bool flat = std_a[g] == 0;
      b.zero_std_groups += flat;
      if ((r_.dynamic_sampling && flat) || b.kept_groups == n) continue;
      ++b.kept_groups;
      for (int64_t j = 0; j < G; ++j) {
        const auto& c = comps[g * G + j];
        if (c.prompt_index != round * n + g || c.sample_index != j) throw Error("rollout returned completions out of order");
        if (c.token_ids.empty()) continue;
        const bool truncated = c.finish_reason == rollout::FinishReason::Length;
        b.prompts.push_back(reqs[g].prompt_ids);
        b.completions.push_back(c.token_ids);
        b.old_logp.push_back(at::tensor(c.logprobs, at::kFloat).to(device_));
        // Truncated completions are masked out entirely when asked (their reward still counts in the group).
        b.advantages.push_back(truncated && r_.mask_truncated_completions ? 0.0 : adv_a[g * G + j]);
        b.tokens += (int64_t)(c.token_ids.size() + reqs[g].prompt_ids.size());
      }
    }
    if (!r_.dynamic_sampling || b.kept_groups == n) break;
  }
  return b;
}

// ---- MoE balance, aux-loss-free (DeepSeek-V3): raise the selection bias of under-loaded experts
// and lower it for over-loaded ones, from the expert load (E) of each MoE layer in this step's
// forward over real tokens. Returns the mean over layers of max load / mean load.
double Trainer::balance_experts(const std::vector<Tensor>& loads) {
  c10::NoGradGuard g;
  auto layers = moe_layers(*master_);
  double spread = 0;
  for (size_t l = 0; l < layers.size() && l < loads.size(); ++l) {
    const Tensor& load = loads[l];
    spread += (load.max() / load.mean().clamp_min(1e-9)).item<double>();
    Tensor& bias = layers[l]->gate->e_score_correction_bias;
    if (r_.bias_update_speed > 0 && bias.defined())
      bias.add_((load.mean() - load).sign().to(bias.device()) * r_.bias_update_speed);
  }
  return loads.empty() ? 0 : spread / loads.size();
}

// ---- num_iterations optimizer steps on one rollout batch, each over mini-batches whose losses
// are weighted to add up to the whole batch's loss (tokens for dapo, sequences for grpo and dr_grpo).
UpdateStats Trainer::update(const RolloutBatch& b) {
  UpdateStats u;
  if (b.prompts.empty()) return u;
  LossConfig lc;
  lc.type = parse_loss_type(r_.loss_type);
  lc.kl = parse_kl_estimator(r_.kl_estimator);
  lc.beta = r_.beta;
  lc.epsilon_low = r_.epsilon;
  lc.epsilon_high = r_.epsilon_high;
  lc.max_completion_length = r_.max_completion_length;

  int64_t max_len = 1;
  for (const auto& c : b.completions) max_len = std::max<int64_t>(max_len, c.size());
  auto [old_t, mask] = pad(b.old_logp, max_len, at::kFloat);
  Tensor adv_t = at::tensor(b.advantages, at::kDouble).to(at::kFloat).to(device_);
  Tensor ref_t;
  if (ref_) {
    c10::NoGradGuard g;
    ref_t = pad(ref_->completion_logprobs(b.prompts, b.completions), max_len, at::kFloat).first;
  }
  const int64_t Bn = (int64_t)b.prompts.size(), mb = r_.mini_batch_size > 0 ? r_.mini_batch_size : Bn;
  // Sequences [s0, s0 + n) of the batch: (prompts, completions).
  auto mini_batch = [&](int64_t s0, int64_t n) {
    using Rows = std::vector<std::vector<int64_t>>;
    return std::make_pair(Rows(b.prompts.begin() + s0, b.prompts.begin() + s0 + n),
                          Rows(b.completions.begin() + s0, b.completions.begin() + s0 + n));
  };
  Tensor rollout_t = old_t;  // the engine's log-probs, for the rollout_logprob_diff metric
  if (r_.recompute_old_logprobs) {
    // The training forward in the same mini-batches as below, so that the first update's ratio is 1.
    c10::NoGradGuard g;
    std::vector<Tensor> rows;
    for (int64_t s0 = 0; s0 < Bn; s0 += mb) {
      const int64_t n = std::min(mb, Bn - s0);
      const auto [ps, cs] = mini_batch(s0, n);
      for (auto& t : policy_->completion_logprobs(ps, cs)) rows.push_back(t);
    }
    old_t = pad(rows, max_len, at::kFloat).first;
  }
  auto moe = moe_layers(*policy_);
  for (auto& m : moe) m->keep_routing = true;
  // Routing covers each forward's (n, T) right-padded batch: sequence i is prompt + completion[:-1]
  // (see completion_logprobs). Masks of its real tokens, one per mini-batch, keep padding out of
  // the expert load and the balance loss.
  std::vector<Tensor> routing_masks;
  if (!moe.empty())
    for (int64_t s0 = 0; s0 < Bn; s0 += mb) {
      std::vector<int64_t> lengths;
      for (int64_t i = s0; i < std::min(Bn, s0 + mb); ++i)
        lengths.push_back((int64_t)b.prompts[i].size() + std::max<int64_t>(0, (int64_t)b.completions[i].size() - 1));
      const int64_t T = std::max<int64_t>(1, *std::max_element(lengths.begin(), lengths.end()));
      routing_masks.push_back(
          (at::arange(T).unsqueeze(0) < at::tensor(lengths, at::kLong).unsqueeze(1)).to(at::kFloat).to(device_));
    }
  const double total_tokens = mask.sum().item<double>();
  for (int64_t it = 0; it < r_.num_iterations; ++it) {
    optimizer_->zero_grad();
    u.loss = u.clip_fraction = u.kl = u.aux_loss = 0;  // reported for the last iteration
    std::vector<Tensor> loads(moe.size());
    for (int64_t s0 = 0; s0 < Bn; s0 += mb) {
      const int64_t n = std::min(mb, Bn - s0);
      const auto [ps, cs] = mini_batch(s0, n);
      Tensor logp = pad(policy_->completion_logprobs(ps, cs), max_len, at::kFloat).first;
      Tensor cmask = mask.narrow(0, s0, n);
      auto lo = grpo_loss({logp, old_t.narrow(0, s0, n), ref_t.defined() ? ref_t.narrow(0, s0, n) : Tensor(), cmask,
                           adv_t.narrow(0, s0, n)},
                          lc);
      const double tw = cmask.sum().item<double>() / std::max(1.0, total_tokens);  // this chunk's share of tokens
      const double w = lc.type == LossType::Dapo ? tw : (double)n / Bn;
      Tensor loss = lo.loss * w;
      u.loss += lo.loss.item<double>() * w;
      u.clip_fraction += lo.clip_fraction * tw;
      u.kl += lo.kl * tw;
      if (it == 0) {
        c10::NoGradGuard g;
        u.rollout_logprob_diff += ((logp - rollout_t.narrow(0, s0, n)).abs() * cmask).sum().item<double>() / std::max(1.0, total_tokens);
      }
      if (!moe.empty()) {
        const Tensor& rmask = routing_masks[s0 / mb];
        Tensor aux;
        for (size_t l = 0; l < moe.size(); ++l) {
          const Tensor& scores = moe[l]->last_scores;
          if (!scores.defined() || scores.size(0) != rmask.numel())
            throw Error("MoE routing of an unexpected shape in the training forward");
          if (it == 0) {  // the balancing bias moves once per step
            Tensor load = expert_load(moe[l]->last_experts, rmask, scores.size(1));
            loads[l] = loads[l].defined() ? loads[l] + load : load;
          }
          if (r_.aux_loss_alpha > 0) {
            Tensor a = sequence_aux_loss(scores, moe[l]->last_experts, rmask, r_.aux_loss_alpha);
            aux = aux.defined() ? aux + a : a;
          }
        }
        if (aux.defined()) {
          loss = loss + aux * ((double)n / Bn);
          u.aux_loss += aux.item<double>() * n / Bn;
        }
      }
      loss.backward();
      accumulate_gradients();
    }
    torch::nn::utils::clip_grad_norm_(master_->parameters(), r_.max_grad_norm);
    optimizer_->step();
    if (it == 0 && !moe.empty()) u.expert_spread = balance_experts(loads);
    sync_policy();
  }
  for (auto& m : moe) m->keep_routing = false;
  return u;
}

// ---------------------------------------------------------------------------------------------
void Trainer::run() {
  if (!st_.sft_done && r_.sft_steps > 0) {
    warm_start();
  } else if (st_.step == 0) {
    EvalResult e = evaluate();
    fprintf(stderr, "grpo train: base model: %s\n", e.describe().c_str());
    json m = {{"step", 0}, {"phase", "base"}};
    e.add_to(m);
    write_metrics(m, 0);
  }
  build_reference();

  const int64_t warmup = (int64_t)std::ceil(r_.warmup_ratio * r_.max_steps);
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t start_step = st_.step;
  for (; st_.step < r_.max_steps;) {
    const int64_t step = st_.step + 1;
    // Learning rate: linear warm-up, then constant or cosine.
    double lr = r_.learning_rate;
    if (step <= warmup) lr *= (double)step / warmup;
    else if (r_.lr_scheduler_type == "cosine")
      lr *= 0.5 * (1 + std::cos(M_PI * (double)(step - warmup) / std::max<int64_t>(1, r_.max_steps - warmup)));
    for (auto& g : optimizer_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

    RolloutBatch batch = sample(step);
    auto t0 = std::chrono::steady_clock::now();
    UpdateStats u = update(batch);
    const double t_train = seconds_since(t0);
    st_.step = step;
    if (ref_ && r_.ref_model_sync_steps > 0 && step % r_.ref_model_sync_steps == 0) rollout::copy_weights(*ref_, *policy_);

    const double N = (double)batch.rewards.size();
    Tensor rewards_t = at::tensor(batch.rewards, at::kDouble);
    json m = {{"step", step},
              {"reward_mean", rewards_t.mean().item<double>()},
              {"reward_std", rewards_t.std().item<double>()},
              {"accuracy", batch.accuracy_sum / N},
              {"loss", u.loss},
              {"kl", u.kl},
              {"clip_fraction", u.clip_fraction},
              {"rollout_logprob_diff", u.rollout_logprob_diff},
              {"completion_length_mean", batch.length_sum / N},
              {"completion_length_max", batch.length_max},
              {"truncated_fraction", batch.truncated / N},
              {"zero_std_groups", (double)batch.zero_std_groups / batch.groups},
              {"reward_errors", batch.reward_errors},
              {"expert_load_max_over_mean", u.expert_spread},
              {"learning_rate", lr},
              {"time_rollout", batch.time_rollout},
              {"time_reward", batch.time_reward},
              {"time_train", t_train},
              {"tokens_per_second", batch.tokens / std::max(1e-9, batch.time_rollout + batch.time_reward + t_train)}};
    if (r_.aux_loss_alpha > 0) m["aux_loss"] = u.aux_loss;
    if (r_.dynamic_sampling) {
      m["gen_batches"] = batch.gen_batches;
      m["kept_groups"] = batch.kept_groups;
    }
    for (const auto& [name, sum] : batch.component_sums) m["reward/" + name] = sum / N;
    if (r_.eval_every > 0 && (step % r_.eval_every == 0 || step == r_.max_steps)) {
      EvalResult e = evaluate();
      e.add_to(m);
      fprintf(stderr, "%sgrpo train: step %lld %s\n", tty_ ? "\n" : "", (long long)step, e.describe().c_str());
    }
    write_metrics(m, step);
    if (tty_)
      fprintf(stderr, "\rgrpo train: step %lld/%lld  reward %.3f  acc %.3f  kl %.4f  len %.1f  %.2f s/step  [rollout %.2f reward %.2f train %.2f]",
              (long long)step, (long long)r_.max_steps, m["reward_mean"].get<double>(), m["accuracy"].get<double>(), u.kl,
              m["completion_length_mean"].get<double>(), seconds_since(t_start) / std::max<int64_t>(1, step - start_step),
              m["time_rollout"].get<double>(), m["time_reward"].get<double>(), t_train);
    else if (step % std::max<int64_t>(1, r_.logging_steps) == 0)
      fprintf(stderr, "grpo train: step %lld reward %.3f acc %.3f\n", (long long)step, m["reward_mean"].get<double>(),
              m["accuracy"].get<double>());
    if (r_.save_every > 0 && (step % r_.save_every == 0 || step == r_.max_steps)) save("checkpoint-" + std::to_string(step));
  }
  if (tty_) fprintf(stderr, "\n");
  fprintf(stderr, "grpo train: done, %lld steps in %.0f s; checkpoints and metrics.jsonl in %s\n", (long long)st_.step,
          seconds_since(t_start), out_.c_str());
}

}  // namespace

int train(const Recipe& recipe, const TrainOptions& options) {
  Trainer(recipe, options).run();
  return 0;
}

}  // namespace grpo::trainer

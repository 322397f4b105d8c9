#include "trainer/grpo_trainer.h"

#include <c10/core/GradMode.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
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
  std::vector<std::string> bad;
  for_each_jsonl_object(file, [&](const json& row, const std::string& where) {
    if (!row.contains(r.prompt_field) || !row[r.prompt_field].is_string() || !row.contains(r.answer_field)) {
      if (bad.size() < 10) bad.push_back(where);
      else bad.push_back("");
      return;
    }
    const json& ans = row[r.answer_field];
    out.push_back({row[r.prompt_field].get<std::string>(), ans.is_string() ? ans.get<std::string>() : ans.dump()});
  });
  if (!bad.empty()) {
    std::string where;
    for (auto& b : bad)
      if (!b.empty()) where += (where.empty() ? "" : ", ") + b;
    fprintf(stderr, "grpo train: %zu rows of %s lack '%s' or '%s' and are skipped (%s%s)\n", bad.size(), file.c_str(),
            r.prompt_field.c_str(), r.answer_field.c_str(), where.c_str(), bad.size() > 10 ? ", ..." : "");
  }
  if (out.empty()) throw Error(file + ": no usable rows (fields '" + r.prompt_field + "', '" + r.answer_field + "')");
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
  R(model_dir); R(model_config); R(model_seed); R(device); R(tokenizer); R(task); R(task_digits); R(train_size); R(eval_size);
  R(data_seed); R(train_file); R(eval_file); R(prompt_field); R(answer_field); R(prompt_template); R(rewards); R(reward_workers);
  R(sft_steps); R(sft_batch_size); R(sft_learning_rate); R(max_steps); R(per_step_prompts); R(num_generations);
  R(max_completion_length); R(temperature); R(top_p); R(learning_rate); R(beta); R(epsilon); R(epsilon_high);
  R(weight_decay); R(max_grad_norm); R(warmup_ratio); R(lr_scheduler_type); R(loss_type); R(kl_estimator);
  R(num_iterations); R(mini_batch_size); R(ref_model_sync_steps); R(bias_update_speed); R(scale_rewards); R(mask_truncated_completions); R(dynamic_sampling); R(eval_every);
  R(save_every); R(logging_steps); R(seed);
#undef R
  if (root["epsilon"] && !root["epsilon_high"]) r.epsilon_high = r.epsilon;
  for (auto it = root.begin(); it != root.end(); ++it) {
    std::string k = it->first.as<std::string>();
    if (!seen.count(k)) throw Error(path + ": unknown key '" + k + "'");
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
int train(const Recipe& r, const TrainOptions& opt) {
  const std::string out = opt.output_dir.empty() ? "runs/" + r.path.substr(r.path.find_last_of('/') + 1) : opt.output_dir;
  make_directories(out);
  torch::manual_seed(r.seed);

  // Model and its config text (kept for checkpoints).
  std::string config_text;
  std::shared_ptr<model::DeepseekForCausalLM> policy;
  const at::Device device(r.device);
  if (!r.model_dir.empty()) {
    policy = model::load_model(r.model_dir, {at::kFloat, device});
    config_text = read_file(r.model_dir + "/config.json");
  } else {
    config_text = read_file(r.model_config);
    policy = std::make_shared<model::DeepseekForCausalLM>(parse_model_config(config_text, r.model_config));
    model::init_weights(*policy, r.model_seed);
    policy->to_device_dtype(device, at::kFloat);
  }
  // Tokenizer.
  std::shared_ptr<const text::Tokenizer> tok;
  if (r.tokenizer == "builtin:bytes")
    tok = std::make_shared<const text::Tokenizer>(text::Tokenizer::from_json(byte_tokenizer_json(), "builtin:bytes"));
  else
    tok = std::make_shared<const text::Tokenizer>(
        text::Tokenizer::load(r.tokenizer.empty() ? r.model_dir + "/tokenizer.json" : r.tokenizer));
  int64_t eos = -1;
  if (auto id = tok->token_to_id("</s>")) eos = *id;
  if (policy->config().eos_token_id) eos = *policy->config().eos_token_id;
  if (eos < 0 || eos >= policy->config().vocab_size) throw Error(r.path + ": no usable eos token id (set eos_token_id)");

  // Data.
  std::vector<Example> train_set, eval_set;
  if (r.task == "addition") {
    std::set<std::pair<int64_t, int64_t>> eval_pairs, train_pairs;
    eval_set = addition(r.task_digits, r.eval_size, r.data_seed + 7777, nullptr, &eval_pairs);
    train_set = addition(r.task_digits, r.train_size, r.data_seed, &eval_pairs, &train_pairs);
  } else {
    train_set = read_examples(r, r.train_file);
    if (!r.eval_file.empty()) eval_set = read_examples(r, r.eval_file);
  }
  auto encode = [&](const std::string& s, bool special) {
    std::vector<int64_t> ids;
    for (int32_t t : tok->encode(s, special)) ids.push_back(t);
    return ids;
  };

  // Rewards: the recipe's combination; accuracy is its `math` component when present.
  auto reward = std::make_shared<rewards::CombinedReward>(r.rewards, rewards::default_registry());
  std::unique_ptr<rewards::Scorer> scorer;
  if (!r.reward_workers.empty()) {
    rewards::ClientOptions co;
    co.spec = r.rewards;
    std::vector<std::string> addrs;
    std::stringstream ss(r.reward_workers);
    for (std::string a; std::getline(ss, a, ',');)
      if (!a.empty()) addrs.push_back(a);
    scorer = std::make_unique<rewards::RewardClient>(addrs, co);
  } else {
    scorer = std::make_unique<rewards::LocalScorer>(reward, 1);
  }

  // State, optimizer, resume.
  State st;
  torch::optim::AdamW optimizer(policy->parameters(),
                                torch::optim::AdamWOptions(r.learning_rate).weight_decay(r.weight_decay).betas({0.9, 0.99}));
  const std::string latest_file = out + "/latest";
  if (opt.resume && file_exists(latest_file)) {
    std::string ck = read_file(latest_file);
    while (!ck.empty() && (ck.back() == '\n' || ck.back() == ' ')) ck.pop_back();
    std::string dir = out + "/" + ck;
    auto saved = model::load_model(dir, {at::kFloat, at::kCPU});  // copied into the policy's device
    rollout::copy_weights(*policy, *saved);
    torch::load(optimizer, dir + "/optimizer.pt");
    json s = json::parse(read_file(dir + "/trainer_state.json"));
    st.step = s["step"];
    st.cursor = s["cursor"];
    st.sft_done = s["sft_done"];
    fprintf(stderr, "grpo train: resumed from %s (step %lld)\n", dir.c_str(), (long long)st.step);
  }
  auto save = [&](const std::string& name) {
    std::string dir = out + "/" + name, tmp = dir + ".tmp";
    std::string cmd = "rm -rf '" + tmp + "'";
    if (std::system(cmd.c_str()) != 0) throw Error("cannot clear " + tmp);
    make_directories(tmp);
    model::save_model(*policy, config_text, tmp, {at::kFloat});
    torch::save(optimizer, tmp + "/optimizer.pt");
    write_file_atomic(tmp + "/trainer_state.json",
                      json{{"step", st.step}, {"cursor", st.cursor}, {"sft_done", st.sft_done}, {"recipe", r.path}}.dump(2));
    std::string swap = "rm -rf '" + dir + "' && mv '" + tmp + "' '" + dir + "'";
    if (std::system(swap.c_str()) != 0) throw Error("cannot move " + tmp + " to " + dir);
    write_file_atomic(latest_file, name + "\n");
  };
  std::ofstream metrics(out + "/metrics.jsonl", std::ios::app);
  EventWriter tensorboard(out);  // `tensorboard --logdir OUT` shows every numeric metric
  const bool tty = ::isatty(2);

  rollout::EngineOptions eo;
  eo.max_batch = std::max<int64_t>(64, r.per_step_prompts * r.num_generations);
  // The optimizer's moments are allocated at the first step: leave them the memory.
  eo.kv_cache_bytes = int64_t(policy->device().is_cuda() ? 4 : 1) << 30;
  rollout::Engine engine(policy, tok.get(), eo);

  // Greedy pass@1 and mean reward on the eval split.
  auto evaluate = [&]() -> std::pair<double, double> {
    if (eval_set.empty()) return {NAN, NAN};
    std::vector<rollout::Request> reqs;
    for (size_t i = 0; i < eval_set.size(); ++i) {
      rollout::Request q;
      q.prompt_index = (int64_t)i;
      q.prompt_ids = encode(apply_template(r, eval_set[i].prompt), true);
      q.params.temperature = 0;
      q.params.max_new_tokens = r.max_completion_length;
      q.params.stop_token_ids = {eos};
      reqs.push_back(q);
    }
    auto cs = engine.generate(reqs);
    double acc = 0, rew = 0;
    for (size_t i = 0; i < cs.size(); ++i) {
      rewards::RewardItem it;
      it.completion = cs[i].text;
      it.reference = eval_set[i].answer;
      auto res = reward->score(it);
      rew += res.reward;
      acc += res.components.count("math") ? res.components["math"] : res.reward;
    }
    return {acc / cs.size(), rew / cs.size()};
  };

  // ---- warm start: supervised steps on prompt -> answer </s> ----
  if (!st.sft_done && r.sft_steps > 0) {
    torch::optim::AdamW sft(policy->parameters(), torch::optim::AdamWOptions(r.sft_learning_rate).weight_decay(0.0));
    auto t0 = std::chrono::steady_clock::now();
    std::mt19937_64 rng(r.seed + 17);
    for (int64_t s = 0; s < r.sft_steps; ++s) {
      std::vector<std::vector<int64_t>> ps, cs;
      for (int64_t b = 0; b < r.sft_batch_size; ++b) {
        const auto& ex = train_set[rng() % train_set.size()];
        ps.push_back(encode(apply_template(r, ex.prompt), true));
        auto c = encode(ex.answer, false);
        c.push_back(eos);
        cs.push_back(c);
      }
      sft.zero_grad();
      auto lps = policy->completion_logprobs(ps, cs);
      Tensor loss = -at::cat(lps).mean();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(policy->parameters(), r.max_grad_norm);
      sft.step();
      if (tty && (s % 10 == 0 || s + 1 == r.sft_steps))
        fprintf(stderr, "\rgrpo train: warm start %lld/%lld  loss %.4f  %.0f s", (long long)s + 1, (long long)r.sft_steps,
                loss.item<double>(), seconds_since(t0));
    }
    if (tty) fprintf(stderr, "\n");
    st.sft_done = true;
    auto [acc, rew] = evaluate();
    fprintf(stderr, "grpo train: after the warm start (%lld steps, %.0f s): eval accuracy %.3f, reward %.3f\n",
            (long long)r.sft_steps, seconds_since(t0), acc, rew);
    metrics << json{{"step", 0}, {"phase", "warm_start"}, {"eval_accuracy", acc}, {"eval_reward", rew}}.dump() << "\n";
    metrics.flush();
    tensorboard.scalar("eval_accuracy", acc, 0);
    tensorboard.scalar("eval_reward", rew, 0);
    save("checkpoint-0");
  } else if (st.step == 0) {
    auto [acc, rew] = evaluate();
    fprintf(stderr, "grpo train: base model: eval accuracy %.3f, reward %.3f\n", acc, rew);
    metrics << json{{"step", 0}, {"phase", "base"}, {"eval_accuracy", acc}, {"eval_reward", rew}}.dump() << "\n";
  }

  // ---- reference model (beta > 0): the policy as GRPO starts, frozen. A resumed run takes it from
  // checkpoint-0 (after the warm start) or rebuilds the initial weights (they are deterministic).
  std::shared_ptr<model::DeepseekForCausalLM> ref;
  if (r.beta != 0) {
    ref = std::make_shared<model::DeepseekForCausalLM>(policy->config());
    if (st.step == 0) {
      ref->to_device_dtype(policy->device(), at::kFloat);
      rollout::copy_weights(*ref, *policy);
    } else if (is_directory(out + "/checkpoint-0")) {
      ref = model::load_model(out + "/checkpoint-0", {at::kFloat, policy->device()});
    } else if (!r.model_dir.empty()) {
      ref = model::load_model(r.model_dir, {at::kFloat, policy->device()});
    } else {
      model::init_weights(*ref, r.model_seed);
      ref->to_device_dtype(policy->device(), at::kFloat);
    }
    for (auto& p : ref->parameters()) p.set_requires_grad(false);
  }

  LossConfig lc;
  lc.type = parse_loss_type(r.loss_type);
  lc.kl = parse_kl_estimator(r.kl_estimator);
  lc.beta = r.beta;
  lc.epsilon_low = r.epsilon;
  lc.epsilon_high = r.epsilon_high;
  lc.max_completion_length = r.max_completion_length;
  AdvantageConfig ac;
  ac.scale_rewards = r.scale_rewards;
  const int64_t G = r.num_generations;
  const int64_t warmup = (int64_t)std::ceil(r.warmup_ratio * r.max_steps);
  auto t_start = std::chrono::steady_clock::now();

  // ---- GRPO ----
  for (; st.step < r.max_steps;) {
    const int64_t step = st.step + 1;
    // Learning rate: linear warm-up, then constant or cosine.
    double lr = r.learning_rate;
    if (step <= warmup) lr *= (double)step / warmup;
    else if (r.lr_scheduler_type == "cosine")
      lr *= 0.5 * (1 + std::cos(M_PI * (double)(step - warmup) / std::max<int64_t>(1, r.max_steps - warmup)));
    for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

    // Rollout.
    auto t0 = std::chrono::steady_clock::now();
    std::vector<rollout::Request> reqs;
    std::vector<const Example*> batch;
    for (int64_t i = 0; i < r.per_step_prompts; ++i) {
      const Example& ex = train_set[(st.cursor + i) % train_set.size()];
      batch.push_back(&ex);
      rollout::Request q;
      q.prompt_index = i;
      q.prompt_ids = encode(apply_template(r, ex.prompt), true);
      q.params.n = G;
      q.params.temperature = r.temperature;
      q.params.top_p = r.top_p;
      q.params.max_new_tokens = r.max_completion_length;
      q.params.stop_token_ids = {eos};
      q.params.seed = r.seed * 1000003 + step;
      reqs.push_back(q);
    }
    engine.weight_version = step;
    auto comps = engine.generate(reqs);
    const double t_rollout = seconds_since(t0);

    // Rewards.
    t0 = std::chrono::steady_clock::now();
    std::vector<rewards::RewardItem> items;
    for (const auto& c : comps) {
      rewards::RewardItem it;
      it.prompt = batch[c.prompt_index]->prompt;
      it.completion = c.text;
      it.reference = batch[c.prompt_index]->answer;
      it.metadata = {{"completion_tokens", c.token_ids.size()}};
      items.push_back(it);
    }
    // Workers that fail are retried by the client; when none answers, the run stops here.
    std::vector<rewards::RewardResult> results;
    for (int attempt = 0;; ++attempt) {
      try {
        results = scorer->score(items);
        break;
      } catch (const Error& e) {
        if (attempt == 2) throw Error("step " + std::to_string(step) + ": rewards failed three times: " + e.what());
        fprintf(stderr, "\ngrpo train: step %lld: rewards failed (%s); retrying\n", (long long)step, e.what());
        std::this_thread::sleep_for(std::chrono::seconds(2 << attempt));
      }
    }
    int64_t errors = 0;
    std::vector<double> rw(results.size());
    double acc = 0;
    for (size_t i = 0; i < results.size(); ++i) {
      if (!results[i].error.empty()) ++errors;
      rw[i] = results[i].reward;
      acc += results[i].components.count("math") ? results[i].components["math"] : results[i].reward;
    }
    if (errors == (int64_t)results.size())
      throw Error("every reward of step " + std::to_string(step) + " failed (first: " + results[0].error +
                  "); not training on silent zero rewards");
    const double t_reward = seconds_since(t0);

    // Advantages and the batch.
    t0 = std::chrono::steady_clock::now();
    Tensor rewards_t = at::tensor(rw, at::kFloat);
    Tensor adv = group_advantages(rewards_t, G, ac);
    Tensor group_std = rewards_t.view({-1, G}).std(1);
    int64_t zero_std = (group_std == 0).sum().item<int64_t>();
    std::vector<std::vector<int64_t>> ps, cs;
    std::vector<Tensor> olds, advs;
    int64_t max_len = 1, truncated = 0, tokens = 0;
    double len_sum = 0;
    for (size_t i = 0; i < comps.size(); ++i) {
      const auto& c = comps[i];
      bool trunc = c.finish_reason == rollout::FinishReason::Length;
      truncated += trunc;
      len_sum += c.token_ids.size();
      if (r.dynamic_sampling && group_std[c.prompt_index].item<float>() == 0) continue;
      if (c.token_ids.empty()) continue;
      ps.push_back(reqs[c.prompt_index].prompt_ids);
      cs.push_back(c.token_ids);
      olds.push_back(at::tensor(c.logprobs, at::kFloat).to(policy->device()));
      // Truncated completions: masked out entirely when asked (their advantage still counted in the group).
      advs.push_back((adv[(int64_t)i] * ((trunc && r.mask_truncated_completions) ? 0.0 : 1.0)).to(policy->device()));
      max_len = std::max<int64_t>(max_len, c.token_ids.size());
      tokens += (int64_t)(c.token_ids.size() + reqs[c.prompt_index].prompt_ids.size());
    }
    double loss_v = 0, clip = 0, kl = 0, expert_spread = 0;
    if (!ps.empty()) {
      auto [old_t, mask] = pad(olds, max_len, at::kFloat);
      Tensor adv_t = at::stack(advs);
      Tensor ref_t;
      if (ref) {
        c10::NoGradGuard g;
        std::vector<Tensor> rl = ref->completion_logprobs(ps, cs);
        ref_t = pad(rl, max_len, at::kFloat).first;
      }
      // Mini-batches with gradient accumulation: each chunk's loss is weighted so that the chunks
      // add up to the whole batch's loss (tokens for dapo, sequences for grpo and dr_grpo).
      const int64_t Bn = (int64_t)ps.size(), mb = r.mini_batch_size > 0 ? r.mini_batch_size : Bn;
      const double total_tokens = mask.sum().item<double>();
      for (int64_t it = 0; it < r.num_iterations; ++it) {
        optimizer.zero_grad();
        double step_loss = 0, step_clip = 0, step_kl = 0;
        for (int64_t s0 = 0; s0 < Bn; s0 += mb) {
          const int64_t n = std::min(mb, Bn - s0);
          std::vector<std::vector<int64_t>> cps(ps.begin() + s0, ps.begin() + s0 + n), ccs(cs.begin() + s0, cs.begin() + s0 + n);
          auto lps = policy->completion_logprobs(cps, ccs);
          Tensor logp = pad(lps, max_len, at::kFloat).first;
          Tensor cmask = mask.narrow(0, s0, n);
          auto lo = grpo_loss({logp, old_t.narrow(0, s0, n), ref_t.defined() ? ref_t.narrow(0, s0, n) : Tensor(), cmask,
                               adv_t.narrow(0, s0, n)},
                              lc);
          const double chunk_tokens = cmask.sum().item<double>();
          const double w = lc.type == LossType::Dapo ? chunk_tokens / std::max(1.0, total_tokens) : (double)n / Bn;
          (lo.loss * w).backward();
          step_loss += lo.loss.item<double>() * w;
          const double tw = chunk_tokens / std::max(1.0, total_tokens);
          step_clip += lo.clip_fraction * tw;
          step_kl += lo.kl * tw;
        }
        torch::nn::utils::clip_grad_norm_(policy->parameters(), r.max_grad_norm);
        optimizer.step();
        loss_v = step_loss;
        clip = step_clip;
        kl = step_kl;
        if (it == 0) {
          // Aux-loss-free balancing (DeepSeek-V3): raise the selection bias of under-loaded
          // experts, lower it for over-loaded ones, from this forward's expert load.
          c10::NoGradGuard g;
          double spread = 0;
          int layers = 0;
          for (int64_t l = 0; l < policy->config().num_hidden_layers; ++l) {
            auto layer = policy->model->layers[l]->as<model::DecoderLayer>();
            if (!layer->moe || !layer->moe->last_expert_load.defined()) continue;
            Tensor load = layer->moe->last_expert_load.to(at::kFloat);
            spread += (load.max() / load.mean().clamp_min(1e-9)).item<double>();
            ++layers;
            Tensor& bias = layer->moe->gate->e_score_correction_bias;
            if (r.bias_update_speed > 0 && bias.defined())
              bias.add_((load.mean() - load).sign().to(bias.device()) * r.bias_update_speed);
          }
          if (layers) expert_spread = spread / layers;
        }
      }
    }
    const double t_train = seconds_since(t0);
    st.step = step;
    st.cursor = (st.cursor + r.per_step_prompts) % (int64_t)train_set.size();
    if (ref && r.ref_model_sync_steps > 0 && step % r.ref_model_sync_steps == 0) rollout::copy_weights(*ref, *policy);

    json m = {{"step", step},
              {"reward_mean", rewards_t.mean().item<double>()},
              {"reward_std", rewards_t.std().item<double>()},
              {"accuracy", acc / results.size()},
              {"loss", loss_v},
              {"kl", kl},
              {"clip_fraction", clip},
              {"completion_length_mean", len_sum / comps.size()},
              {"completion_length_max", max_len},
              {"truncated_fraction", (double)truncated / comps.size()},
              {"zero_std_groups", (double)zero_std / r.per_step_prompts},
              {"reward_errors", errors},
              {"expert_load_max_over_mean", expert_spread},
              {"learning_rate", lr},
              {"time_rollout", t_rollout},
              {"time_reward", t_reward},
              {"time_train", t_train},
              {"tokens_per_second", tokens / std::max(1e-9, t_rollout + t_reward + t_train)}};
    for (const auto& kv : results[0].components) {
      double s = 0;
      for (const auto& res : results) s += res.components.count(kv.first) ? res.components.at(kv.first) : 0;
      m["reward/" + kv.first] = s / results.size();
    }
    if (r.eval_every > 0 && (step % r.eval_every == 0 || step == r.max_steps)) {
      auto [eacc, erew] = evaluate();
      m["eval_accuracy"] = eacc;
      m["eval_reward"] = erew;
      fprintf(stderr, "%sgrpo train: step %lld eval accuracy %.3f reward %.3f\n", tty ? "\n" : "", (long long)step, eacc, erew);
    }
    metrics << m.dump() << "\n";
    metrics.flush();
    for (const auto& [k, v] : m.items())
      if (v.is_number() && k != "step") tensorboard.scalar(k, v.get<double>(), step);
    tensorboard.flush();
    if (tty)
      fprintf(stderr, "\rgrpo train: step %lld/%lld  reward %.3f  acc %.3f  kl %.4f  len %.1f  %.2f s/step  [rollout %.2f reward %.2f train %.2f]",
              (long long)step, (long long)r.max_steps, m["reward_mean"].get<double>(), m["accuracy"].get<double>(), kl,
              m["completion_length_mean"].get<double>(), seconds_since(t_start) / std::max<int64_t>(1, step),
              t_rollout, t_reward, t_train);
    else if (step % std::max<int64_t>(1, r.logging_steps) == 0)
      fprintf(stderr, "grpo train: step %lld reward %.3f acc %.3f\n", (long long)step, m["reward_mean"].get<double>(),
              m["accuracy"].get<double>());
    if (r.save_every > 0 && (step % r.save_every == 0 || step == r.max_steps)) save("checkpoint-" + std::to_string(step));
  }
  if (tty) fprintf(stderr, "\n");
  fprintf(stderr, "grpo train: done, %lld steps in %.0f s; checkpoints and metrics.jsonl in %s\n", (long long)st.step,
          seconds_since(t_start), out.c_str());
  return 0;
}

}  // namespace grpo::trainer

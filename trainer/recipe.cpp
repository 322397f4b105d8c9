#include "trainer/recipe.h"

#include <yaml-cpp/yaml.h>

#include <functional>
#include <map>
#include <cmath>
#include <set>
#include <sstream>

#include "rewards/builtin.h"
#include "rewards/plugin.h"
#include "util/error.h"
#include "util/files.h"
#include "util/strings.h"

namespace grpo::trainer {

namespace {

// ---- values: YAML -> typed field, and back to text for --help.
template <typename T>
void convert(const YAML::Node& n, T& out) {
  out = n.as<T>();
}
void convert(const YAML::Node& n, double& out) {
  out = n.as<double>();
  if (!std::isfinite(out)) throw Error("must be a finite number (got " + n.as<std::string>() + ")");
}
void convert(const YAML::Node& n, std::vector<std::string>& out) {
  if (n.IsSequence()) out = n.as<std::vector<std::string>>();
  else out = split_list(n.as<std::string>());  // "a,b" as well as [a, b]
}
void convert(const YAML::Node& n, std::vector<int64_t>& out) {  // [2, 5], "2,5" or 2
  out.clear();
  try {
    if (n.IsSequence()) out = n.as<std::vector<int64_t>>();
    else
      for (const auto& x : split_list(n.as<std::string>())) out.push_back(YAML::Load(x).as<int64_t>());
  } catch (const YAML::Exception&) {
    throw Error("expected whole numbers, such as [2, 5] or 2,5");
  }
}
void convert(const YAML::Node& n, std::map<std::string, double>& out) {
  if (!n.IsMap()) throw Error("expected a mapping of reward names to minimum values, such as {format: 1}");
  out.clear();
  for (auto it = n.begin(); it != n.end(); ++it) {
    double v = it->second.as<double>();
    if (!std::isfinite(v)) throw Error("must be finite numbers");
    out[it->first.as<std::string>()] = v;
  }
}
void convert(const YAML::Node& n, std::map<std::string, std::string>& out) {
  if (!n.IsMap()) throw Error("expected a mapping of data sources to reward specs, such as {gsm8k: math, chat: rm}");
  out.clear();
  for (auto it = n.begin(); it != n.end(); ++it) out[it->first.as<std::string>()] = it->second.as<std::string>();
}
void convert(const YAML::Node& n, nlohmann::json& out);
nlohmann::json to_json(const YAML::Node& n, int depth = 0) {
  if (depth > 64) throw Error("nested deeper than 64 levels");
  if (n.IsMap()) {
    nlohmann::json o = nlohmann::json::object();
    for (auto it = n.begin(); it != n.end(); ++it) o[it->first.as<std::string>()] = to_json(it->second, depth + 1);
    return o;
  }
  if (n.IsSequence()) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& x : n) a.push_back(to_json(x, depth + 1));
    return a;
  }
  if (n.IsNull()) return nullptr;
  const std::string s = n.as<std::string>();
  bool b;
  if (YAML::convert<bool>::decode(n, b) && s != "0" && s != "1") return b;
  try {
    size_t used = 0;
    long long i = std::stoll(s, &used);
    if (used == s.size()) return i;
    double d = std::stod(s, &used);
    if (used == s.size()) return d;
  } catch (const std::exception&) {
  }
  return s;
}
void convert(const YAML::Node& n, nlohmann::json& out) {
  if (!n.IsMap()) throw Error("expected a mapping such as {math: {precision: 4}}");
  out = to_json(n);
}

template <typename E>
E pick(const std::string& s, const std::vector<std::pair<const char*, E>>& names) {
  std::string expected;
  for (const auto& [name, value] : names) {
    if (s == name) return value;
    expected += (expected.empty() ? "" : ", ") + std::string(name);
  }
  throw Error("'" + s + "': expected " + expected);
}
void convert(const YAML::Node& n, Task& out) {
  out = pick<Task>(n.as<std::string>(),
                   {{"addition", Task::Addition}, {"addition_cot", Task::AdditionCot}, {"jsonl", Task::Jsonl}});
}
void convert(const YAML::Node& n, LrScheduler& out) {
  out = pick<LrScheduler>(n.as<std::string>(), {{"constant", LrScheduler::Constant}, {"cosine", LrScheduler::Cosine}});
}
void convert(const YAML::Node& n, ScaleRewards& out) {  // TRL also takes true (= group) and false (= none)
  out = pick<ScaleRewards>(n.as<std::string>(), {{"group", ScaleRewards::Group}, {"batch", ScaleRewards::Batch},
                                                 {"none", ScaleRewards::None}, {"true", ScaleRewards::Group},
                                                 {"false", ScaleRewards::None}});
}
void convert(const YAML::Node& n, StageType& out) {
  out = pick<StageType>(n.as<std::string>(), {{"grpo", StageType::Grpo}, {"sft", StageType::Sft},
                                               {"rejection_sampling", StageType::RejectionSampling},
                                               {"reward_model", StageType::RewardModel}, {"distill", StageType::Distill}});
}
void convert(const YAML::Node& n, RolloutQuantization& out) {
  out = pick<RolloutQuantization>(n.as<std::string>(), {{"none", RolloutQuantization::None}, {"fp8", RolloutQuantization::Fp8}});
}
void convert(const YAML::Node& n, LossType& out) { out = parse_loss_type(n.as<std::string>()); }
void convert(const YAML::Node& n, KlEstimator& out) { out = parse_kl_estimator(n.as<std::string>()); }
void convert(const YAML::Node& n, RolloutIs& out) { out = parse_rollout_is(n.as<std::string>()); }
void convert(const YAML::Node& n, RolloutIsMode& out) { out = parse_rollout_is_mode(n.as<std::string>()); }

std::string show(const std::string& s) { return s.empty() ? "\"\"" : s; }
std::string show(bool b) { return b ? "true" : "false"; }
template <typename T>
std::string show(const T& v) {
  std::ostringstream o;
  o << v;
  return o.str();
}
std::string show(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& x : v) out += (out.empty() ? "" : ",") + x;
  return out.empty() ? "[]" : out;
}
std::string show(const std::vector<int64_t>& v) { return nlohmann::json(v).dump(); }
std::string show(const nlohmann::json& j) { return j.dump(); }
std::string show(const std::map<std::string, double>& m) { return nlohmann::json(m).dump(); }
std::string show(const std::map<std::string, std::string>& m) { return nlohmann::json(m).dump(); }
std::string show(Task t) { return t == Task::Addition ? "addition" : t == Task::AdditionCot ? "addition_cot" : "jsonl"; }
std::string show(LrScheduler l) { return l == LrScheduler::Constant ? "constant" : "cosine"; }
std::string show(ScaleRewards s) { return s == ScaleRewards::Group ? "group" : s == ScaleRewards::Batch ? "batch" : "none"; }
std::string show(RolloutQuantization q) { return q == RolloutQuantization::Fp8 ? "fp8" : "none"; }
std::string show(LossType t) { return to_string(t); }
std::string show(KlEstimator k) { return to_string(k); }
std::string show(RolloutIs r) { return to_string(r); }
std::string show(RolloutIsMode m) { return to_string(m); }

// ---- the key table.
struct Key {
  std::string name, section, help;
  std::function<void(StageSettings&, const YAML::Node&)> set;
  std::function<std::string(const StageSettings&)> get;
};

template <typename Section, typename T>
Key key(const char* name, const char* section, Section StageSettings::*sec, T Section::*field, const char* help) {
  return {name, section, help, [sec, field](StageSettings& s, const YAML::Node& n) { convert(n, (s.*sec).*field); },
          [sec, field](const StageSettings& s) { return show((s.*sec).*field); }};
}

const std::vector<Key>& keys() {
  using S = StageSettings;
  static const std::vector<Key> table = {
      key("model_dir", "model", &S::model, &ModelSettings::model_dir, "HF checkpoint directory of the policy"),
      key("model_config", "model", &S::model, &ModelSettings::model_config, "config.json for a random initialisation instead"),
      key("model_seed", "model", &S::model, &ModelSettings::model_seed, "seed of that initialisation"),
      key("device", "model", &S::model, &ModelSettings::device, "cpu, cuda or cuda:N"),
      key("bf16", "model", &S::model, &ModelSettings::bf16, "bf16 compute with fp32 master weights and optimizer state"),
      key("tokenizer", "model", &S::model, &ModelSettings::tokenizer, "builtin:bytes, a tokenizer.json, or \"\" for model_dir's"),
      key("lora_r", "model", &S::model, &ModelSettings::lora_r, "LoRA rank; > 0 freezes the base and trains adapters (0 = full fine-tuning)"),
      key("lora_alpha", "model", &S::model, &ModelSettings::lora_alpha, "LoRA alpha: adapters scaled by lora_alpha / lora_r"),
      key("lora_dropout", "model", &S::model, &ModelSettings::lora_dropout, "dropout on the adapters' input while training"),
      key("lora_target_modules", "model", &S::model, &ModelSettings::lora_target_modules,
          "layers to adapt, PEFT's names (q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj, gate_proj, up_proj, down_proj, ...) or all-linear"),
      key("use_rslora", "model", &S::model, &ModelSettings::use_rslora, "rank-stabilised LoRA: scale by lora_alpha / sqrt(lora_r)"),
      key("gradient_checkpointing", "model", &S::model, &ModelSettings::gradient_checkpointing,
          "keep only each decoder layer's input and recompute the layer in the backward pass (less activation memory)"),
      key("mtp_loss_weight", "model", &S::model, &ModelSettings::mtp_loss_weight,
          "DeepSeek-V3's MTP loss weight: the MTP modules learn to predict 2..D+1 tokens ahead (sft: with the "
          "model, as in pre-training; grpo: on the completions, the policy's gradient untouched; 0: off)"),
      key("lora_save_merged", "model", &S::model, &ModelSettings::lora_save_merged,
          "LoRA checkpoints also hold the merged full model (merged/)"),
      key("task", "data", &S::data, &DataSettings::task, "addition, addition_cot (worked R1-format solutions) or jsonl"),
      key("task_digits", "data", &S::data, &DataSettings::task_digits, "digits of the built-in addition problems"),
      key("train_size", "data", &S::data, &DataSettings::train_size, "built-in training problems"),
      key("eval_size", "data", &S::data, &DataSettings::eval_size, "built-in held-out problems"),
      key("data_seed", "data", &S::data, &DataSettings::data_seed, "seed of the built-in problems and of the shuffling"),
      key("train_file", "data", &S::data, &DataSettings::train_file, "training prompts, JSONL"),
      key("eval_file", "data", &S::data, &DataSettings::eval_file, "held-out prompts, JSONL"),
      key("prompt_field", "data", &S::data, &DataSettings::prompt_field, "JSONL field of the prompt"),
      key("answer_field", "data", &S::data, &DataSettings::answer_field, "JSONL field of the reference answer"),
      key("answer_delimiter", "data", &S::data, &DataSettings::answer_delimiter, "reference = text after its last occurrence (GSM8K: ####)"),
      key("completion_field", "data", &S::data, &DataSettings::completion_field, "sft: JSONL field of the completion to learn"),
      key("prompt_template", "data", &S::data, &DataSettings::prompt_template, "text with {prompt}, or r1_zero"),
      key("prompt_format", "data", &S::data, &DataSettings::prompt_format, "template, or chat (render with the model's chat template)"),
      key("chat_template", "data", &S::data, &DataSettings::chat_template, "chat: a .jinja file to use instead of the model's template"),
      key("system_prompt", "data", &S::data, &DataSettings::system_prompt, "chat: a system message before each prompt"),
      key("messages_field", "data", &S::data, &DataSettings::messages_field, "sft: JSONL field of a whole conversation (chat)"),
      key("chosen_field", "data", &S::data, &DataSettings::chosen_field, "reward_model: JSONL field of the preferred completion"),
      key("rejected_field", "data", &S::data, &DataSettings::rejected_field, "reward_model: JSONL field of the rejected completion"),
      key("general_share", "data", &S::data, &DataSettings::general_share, "built-in tasks: share of problems with data_source general (else math)"),
      key("shuffle", "data", &S::data, &DataSettings::shuffle, "a new seeded permutation of the training set each epoch"),
      key("max_length", "sft", &S::sft, &SftSettings::max_length, "sft: tokens per row; longer examples are truncated"),
      key("packing", "sft", &S::sft, &SftSettings::packing, "sft: several examples per row (attention stays within each)"),
      key("num_train_epochs", "sft", &S::sft, &SftSettings::num_train_epochs, "sft: passes over the data (max_steps, when given, caps)"),
      key("per_device_train_batch_size", "sft", &S::sft, &SftSettings::per_device_train_batch_size, "sft: rows per optimizer step"),
      key("num_samples", "rejection_sampling", &S::rejection, &RejectionSettings::num_samples, "rejection_sampling: completions per prompt"),
      key("max_prompts", "rejection_sampling", &S::rejection, &RejectionSettings::max_prompts, "rejection_sampling: the first N training prompts (0: all)"),
      key("min_rewards", "rejection_sampling", &S::filter, &RejectionFilter::min_rewards, "rejection_sampling: keep when each reward >= value, e.g. {format: 1}"),
      key("require_correct", "rejection_sampling", &S::filter, &RejectionFilter::require_correct, "rejection_sampling: keep only right answers (math component)"),
      key("language", "rejection_sampling", &S::filter, &RejectionFilter::language, "rejection_sampling: en or zh: the chain of thought's language (\"\": any)"),
      key("min_language_consistency", "rejection_sampling", &S::filter, &RejectionFilter::min_language_consistency, "rejection_sampling: its share at least"),
      key("min_completion_tokens", "rejection_sampling", &S::filter, &RejectionFilter::min_tokens, "rejection_sampling: length bounds (0: none)"),
      key("max_completion_tokens", "rejection_sampling", &S::filter, &RejectionFilter::max_tokens, "rejection_sampling: length bounds (0: none)"),
      key("max_repeated_ngram_share", "rejection_sampling", &S::filter, &RejectionFilter::max_repeated_ngram_share, "rejection_sampling: repeated word 4-grams at most (1: off)"),
      key("reject_repeated_paragraphs", "rejection_sampling", &S::filter, &RejectionFilter::reject_repeated_paragraphs, "rejection_sampling: drop a sample with a paragraph twice"),
      key("deduplicate", "rejection_sampling", &S::filter, &RejectionFilter::deduplicate, "rejection_sampling: one copy of identical samples of a prompt"),
      key("drop_truncated", "rejection_sampling", &S::filter, &RejectionFilter::drop_truncated, "rejection_sampling: drop samples cut at max_completion_length"),
      key("max_kept_per_prompt", "rejection_sampling", &S::filter, &RejectionFilter::max_kept_per_prompt, "rejection_sampling: at most N kept per prompt (0: all)"),
      key("rewards", "rewards", &S::rewards, &RewardSettings::spec, "name[:weight],... e.g. math,format:0.2"),
      key("reward_workers", "rewards", &S::rewards, &RewardSettings::workers, "host:port,... of reward workers (empty: in process)"),
      key("reward_options", "rewards", &S::rewards, &RewardSettings::options, "per reward, e.g. {math: {precision: 4}}"),
      key("reward_plugins", "rewards", &S::rewards, &RewardSettings::plugins, "C++ reward plugins (.so) to load"),
      key("rewards_by_source", "rewards", &S::rewards, &RewardSettings::by_source, "per data source, e.g. {gsm8k: math, chat: rm}; others get rewards"),
      key("reward_source_field", "rewards", &S::rewards, &RewardSettings::source_field, "the dataset column naming a row's data source"),
      key("reward_model", "rewards", &S::rewards, &RewardSettings::reward_model, "a reward-model directory or stage:NAME, scored in process as the reward reward_model"),
      key("reward_timeout", "rewards", &S::rewards, &RewardSettings::timeout, "seconds a reward worker has per call before the call is retried on the next"),
      key("reward_token_file", "rewards", &S::rewards, &RewardSettings::token_file, "file with the token the reward workers expect"),
      key("reward_tls_ca", "rewards", &S::rewards, &RewardSettings::tls_ca, "PEM root certificate of the reward workers' TLS"),
      key("sft_steps", "warm_start", &S::warm_start, &WarmStartSettings::sft_steps, "supervised steps before GRPO"),
      key("sft_batch_size", "warm_start", &S::warm_start, &WarmStartSettings::sft_batch_size, "examples per supervised step (over all ranks)"),
      key("sft_learning_rate", "warm_start", &S::warm_start, &WarmStartSettings::sft_learning_rate, "learning rate of the warm start"),
      key("per_step_prompts", "rollout", &S::rollout, &RolloutSettings::per_step_prompts, "prompts per step (groups)"),
      key("num_generations", "rollout", &S::rollout, &RolloutSettings::num_generations, "G, completions per prompt"),
      key("max_completion_length", "rollout", &S::rollout, &RolloutSettings::max_completion_length, "tokens per completion at most"),
      key("temperature", "rollout", &S::rollout, &RolloutSettings::temperature, "sampling temperature"),
      key("top_p", "rollout", &S::rollout, &RolloutSettings::top_p, "nucleus sampling"),
      key("kv_cache_mb", "rollout", &S::rollout, &RolloutSettings::kv_cache_mb, "engine KV cache budget (0: 1024 on CPU, 4096 on CUDA)"),
      key("max_batch", "rollout", &S::rollout, &RolloutSettings::max_batch, "sequences decoded together (0: max(64, prompts x G))"),
      key("recompute_old_logprobs", "rollout", &S::rollout, &RolloutSettings::recompute_old_logprobs, "pi_old from the training forward"),
      key("speculative_mtp", "rollout", &S::rollout, &RolloutSettings::speculative_mtp,
          "speculative decoding with the model's MTP module as the draft (DeepSeek-V3); samples keep the policy's distribution"),
      key("num_speculative_tokens", "rollout", &S::rollout, &RolloutSettings::num_speculative_tokens,
          "drafts per speculative step (the MTP module chained on its own drafts)"),
      key("exact_rollout", "rollout", &S::rollout, &RolloutSettings::exact_rollout,
          "batch-invariant forward in the engine and the trainer: rollout log-probs equal training's to the bit"),
      key("exact_rollout_check_every", "rollout", &S::rollout, &RolloutSettings::exact_rollout_check_every,
          "with exact_rollout: the update reuses the engine's values; every this many steps it recomputes them and reports rollout_logprob_diff (1: every step, 0: never)"),
      key("rollout_quantization", "rollout", &S::rollout, &RolloutSettings::quantization,
          "none, or fp8: the engine decodes with FP8 copies of the weights (DeepSeek-V3's 128x128 block scales)"),
      key("async_rollout", "rollout", &S::rollout, &RolloutSettings::async_rollout, "rollout in a second thread, at most this stale: 1 one-step-off, 0, -1 off"),
      key("rollout_device", "rollout", &S::rollout, &RolloutSettings::rollout_device, "with async_rollout: the device of the sampling copy (cpu, cuda or cuda:N; default the training device)"),
      key("loss_type", "loss", &S::loss, &LossConfig::type, "grpo, dapo or dr_grpo"),
      key("beta", "loss", &S::loss, &LossConfig::beta, "KL coefficient (0: no reference model)"),
      key("kl_estimator", "loss", &S::loss, &LossConfig::kl, "k1, k2 or k3"),
      key("rollout_is", "loss", &S::loss, &LossConfig::rollout_is,
          "importance weights pi_old/pi_rollout on the policy loss: off, token, sequence or geometric"),
      key("rollout_is_mode", "loss", &S::loss, &LossConfig::rollout_is_mode, "truncate (TIS: min(w, C)) or mask (0 outside [1/C, C])"),
      key("rollout_is_threshold", "loss", &S::loss, &LossConfig::rollout_is_threshold, "C of rollout_is"),
      key("epsilon", "loss", &S::loss, &LossConfig::epsilon_low, "lower clip range (and upper unless epsilon_high)"),
      key("epsilon_high", "loss", &S::loss, &LossConfig::epsilon_high, "upper clip range (DAPO clip-higher)"),
      key("scale_rewards", "advantages", &S::advantages, &AdvantageSettings::scale_rewards, "group, batch or none (Dr. GRPO)"),
      key("mask_truncated_completions", "advantages", &S::advantages, &AdvantageSettings::mask_truncated_completions, "no loss on truncated completions"),
      key("dynamic_sampling", "advantages", &S::advantages, &AdvantageSettings::dynamic_sampling, "DAPO: drop zero-variance groups, refill"),
      key("max_num_gen_batches", "advantages", &S::advantages, &AdvantageSettings::max_num_gen_batches, "rollout batches per step at most"),
      key("max_steps", "optim", &S::optim, &OptimSettings::max_steps, "GRPO steps; sft: a cap on the epochs' steps (0: none)"),
      key("num_iterations", "optim", &S::optim, &OptimSettings::num_iterations, "optimizer steps per rollout batch (mu)"),
      key("mini_batch_size", "optim", &S::optim, &OptimSettings::mini_batch_size, "sequences per forward/backward (0: all)"),
      key("max_tokens_per_mini_batch", "optim", &S::optim, &OptimSettings::max_tokens_per_mini_batch,
          "grpo: mini-batches by padded tokens (sequences x longest) instead of by count (0: off)"),
      key("learning_rate", "optim", &S::optim, &OptimSettings::learning_rate, "AdamW learning rate"),
      key("weight_decay", "optim", &S::optim, &OptimSettings::weight_decay, "AdamW weight decay"),
      key("max_grad_norm", "optim", &S::optim, &OptimSettings::max_grad_norm, "gradient clipping"),
      key("zero_stage", "optim", &S::optim, &OptimSettings::zero_stage,
          "several ranks: 1 shards AdamW state (and the bf16 run's fp32 master) over the ranks, 2 also the gradients (0: replicas)"),
      key("overlap_grad_reduce", "optim", &S::optim, &OptimSettings::overlap_grad_reduce,
          "several ranks: start gradient collectives during the backward pass, bucket by bucket"),
      key("bucket_cap_mb", "optim", &S::optim, &OptimSettings::bucket_cap_mb, "several ranks: MiB of gradients per collective"),
      key("ddp_timeout", "optim", &S::optim, &OptimSettings::ddp_timeout,
          "several ranks: seconds a collective waits for the others before failing"),
      key("warmup_ratio", "optim", &S::optim, &OptimSettings::warmup_ratio, "linear warm-up share of max_steps"),
      key("lr_scheduler_type", "optim", &S::optim, &OptimSettings::lr_scheduler_type, "constant or cosine"),
      key("ref_model_sync_steps", "optim", &S::optim, &OptimSettings::ref_model_sync_steps, "copy the policy into the reference every K steps"),
      key("seed", "optim", &S::optim, &OptimSettings::seed, "sampling and warm-start seed"),
      key("bias_update_speed", "moe", &S::moe, &MoESettings::bias_update_speed, "aux-loss-free expert balancing (0: off)"),
      key("aux_loss_alpha", "moe", &S::moe, &MoESettings::aux_loss_alpha, "sequence-wise balance loss weight (0: off)"),
      key("routing_replay", "moe", &S::moe, &MoESettings::routing_replay, "train on the experts the rollout routed each token to"),
      key("eval_every", "eval", &S::eval, &EvalSettings::eval_every, "evaluate every N steps (0: never)"),
      key("eval_num_generations", "eval", &S::eval, &EvalSettings::eval_num_generations, "k samples per eval prompt (0: greedy only)"),
      key("save_every", "checkpoint", &S::checkpoint, &CheckpointSettings::save_every, "checkpoint every N steps (0: at the end only)"),
      key("save_total_limit", "checkpoint", &S::checkpoint, &CheckpointSettings::save_total_limit, "keep the newest N checkpoint-N, N > 0 (0: all)"),
      key("save_bf16", "checkpoint", &S::checkpoint, &CheckpointSettings::save_bf16, "also write bf16 weights in each checkpoint's bf16/"),
      key("logging_steps", "checkpoint", &S::checkpoint, &CheckpointSettings::logging_steps, "console line every N steps off a terminal"),
      key("profile_steps", "checkpoint", &S::checkpoint, &CheckpointSettings::profile_steps,
          "grpo, sft: steps to run under the PyTorch profiler, e.g. [2]: profile/step-N-<phase>.json (Chrome traces) and step-N.md (where the time went)"),
  };
  return table;
}

const Key* find_key(const std::string& name) {
  for (const auto& k : keys())
    if (k.name == name) return &k;
  return nullptr;
}

bool is_section(const std::string& name) {
  for (const auto& k : keys())
    if (k.section == name) return true;
  return false;
}

// A mapping key or a stage name: plain text, never a list or mapping.
std::string plain_text(const YAML::Node& n, const std::string& where, const char* what) {
  if (!n.IsScalar()) throw Error(where + ": " + what + " must be plain text, not a list or mapping");
  return n.Scalar();
}

// Sets `name` in `s` from `value`; `given` records it. `where` starts every message.
void set_key(StageSettings& s, std::set<std::string>& given, const std::string& name, const YAML::Node& value,
             const std::string& where) {
  const Key* k = find_key(name);
  if (!k) throw Error(where + ": unknown key '" + name + "' (grpo train --help lists them)");
  try {
    k->set(s, value);
  } catch (const YAML::Exception& e) {
    throw Error(where + ": key '" + name + "': " + e.msg);
  } catch (const Error& e) {
    throw Error(where + ": key '" + name + "': " + e.what());
  }
  given.insert(name);
}

// Reads a mapping of keys (and of section mappings) into `s`.
void read_mapping(const YAML::Node& map, StageSettings& s, std::set<std::string>& given, const std::string& where,
                  const std::set<std::string>& skip) {
  std::set<std::string> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    const std::string name = plain_text(it->first, where, "a key");
    if (!seen.insert(name).second) throw Error(where + ": key '" + name + "' is given twice");
    if (skip.count(name)) continue;
    if (is_section(name) && it->second.IsMap() && !find_key(name)) {
      for (auto kt = it->second.begin(); kt != it->second.end(); ++kt) {
        const std::string inner = plain_text(kt->first, where, "a key");
        const Key* k = find_key(inner);
        if (k && k->section != name)
          throw Error(where + ": key '" + inner + "' belongs to section '" + k->section + "', not '" + name + "'");
        set_key(s, given, inner, kt->second, where);
      }
      continue;
    }
    set_key(s, given, name, it->second, where);
  }
}

void check(StageSettings& s, const std::set<std::string>& given, const std::string& where) {
  auto need = [&](bool ok, const std::string& key, const std::string& what) {
    if (!ok) throw Error(where + ": key '" + key + "': " + what);
  };
  if (given.count("epsilon") && !given.count("epsilon_high")) s.loss.epsilon_high = s.loss.epsilon_low;
  if (s.type == StageType::Sft || s.type == StageType::Distill || s.type == StageType::RewardModel) {
    if (!given.count("max_steps")) s.optim.max_steps = 0;  // the epochs decide
    need(s.sft.max_length >= 2, "max_length", "must be at least 2");
    need(s.sft.num_train_epochs >= 1, "num_train_epochs", "must be at least 1");
    need(s.sft.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be at least 1");
  }
  if (s.type == StageType::RejectionSampling) {
    need(s.rejection.num_samples >= 1, "num_samples", "must be at least 1");
    need(s.rejection.max_prompts >= 0, "max_prompts", "must not be negative");
    need(s.filter.language.empty() || s.filter.language == "en" || s.filter.language == "zh", "language",
         "must be en, zh or \"\"");
  }
  s.loss.max_completion_length = s.rollout.max_completion_length;
  need(!s.model.model_dir.empty() || !s.model.model_config.empty(), "model_dir",
       "give model_dir (HF checkpoint) or model_config");
  need(s.model.lora_r >= 0, "lora_r", "must not be negative");
  need(s.model.lora_r == 0 || s.model.lora_alpha > 0, "lora_alpha", "must be positive");
  need(s.model.lora_dropout >= 0 && s.model.lora_dropout < 1, "lora_dropout", "must be in [0, 1)");
  need(s.model.lora_r == 0 || !s.model.lora_target_modules.empty(), "lora_target_modules", "must name at least one layer, or all-linear");
  need(!s.model.gradient_checkpointing || s.moe.aux_loss_alpha == 0, "gradient_checkpointing",
       "cannot be combined with aux_loss_alpha > 0 yet (the balance loss needs the routing's graph)");
  need(!s.model.gradient_checkpointing || s.model.lora_dropout == 0, "gradient_checkpointing",
       "cannot be combined with lora_dropout > 0 yet (the recomputed layer would draw other dropout masks)");
  need(s.model.mtp_loss_weight >= 0, "mtp_loss_weight", "must not be negative");
  need(s.model.lora_r == 0 || s.model.mtp_loss_weight == 0, "mtp_loss_weight",
       "needs full fine-tuning (under LoRA the MTP modules are frozen with the base)");
  need(s.model.mtp_loss_weight == 0 || s.type == StageType::Sft || s.type == StageType::Grpo, "mtp_loss_weight",
       "is for sft and grpo stages");
  need(s.model.lora_r == 0 || s.optim.ref_model_sync_steps == 0, "ref_model_sync_steps",
       "cannot refresh the reference under LoRA (the reference is the base, the adapters switched off)");
  need(s.model.lora_r == 0 || s.type != StageType::RewardModel, "lora_r", "reward_model stages train the full model (LoRA is for sft, grpo and distill stages)");
  need(s.rollout.num_generations >= 2, "num_generations", "must be at least 2 (advantages compare samples of a prompt)");
  need(s.rollout.per_step_prompts >= 1, "per_step_prompts", "must be at least 1");
  need(s.rollout.max_completion_length >= 1, "max_completion_length", "must be at least 1");
  need(s.rollout.temperature > 0, "temperature", "must be positive for sampling");
  need(s.rollout.top_p > 0 && s.rollout.top_p <= 1, "top_p", "must be in (0, 1]");
  need(s.rollout.kv_cache_mb >= 0, "kv_cache_mb", "must not be negative");
  need(s.rollout.max_batch >= 0, "max_batch", "must not be negative");
  need(s.rollout.num_speculative_tokens >= 1 && s.rollout.num_speculative_tokens <= 16, "num_speculative_tokens",
       "must be in [1, 16]");
  need(s.optim.learning_rate > 0, "learning_rate", "must be positive");
  need(s.optim.num_iterations >= 1, "num_iterations", "must be at least 1");
  need(s.optim.max_steps >= 0, "max_steps", "must not be negative");
  need(s.optim.mini_batch_size >= 0, "mini_batch_size", "must not be negative");
  need(s.optim.zero_stage >= 0 && s.optim.zero_stage <= 2, "zero_stage", "must be 0, 1 or 2");
  need(s.optim.bucket_cap_mb > 0, "bucket_cap_mb", "must be positive");
  need(s.optim.ddp_timeout > 0, "ddp_timeout", "must be positive (seconds)");
  need(s.loss.rollout_is_threshold > 1, "rollout_is_threshold", "must be above 1");
  need(s.rollout.async_rollout >= -1 && s.rollout.async_rollout <= 1, "async_rollout",
       "must be 1 (one-step-off), 0 (asynchronous machinery, no staleness) or -1 (off)");
  need(s.rollout.quantization == RolloutQuantization::None || !s.rollout.exact_rollout, "rollout_quantization",
       "fp8 cannot be combined with exact_rollout (FP8 products cannot equal the bf16 training forward)");
  need(s.rollout.exact_rollout_check_every >= 0, "exact_rollout_check_every", "must not be negative");
  need(!s.rollout.exact_rollout || !s.moe.routing_replay, "routing_replay",
       "is redundant with exact_rollout (the batch-invariant forward routes every token as the rollout did)");
  need(s.loss.rollout_is == RolloutIs::Off || s.rollout.recompute_old_logprobs, "rollout_is",
       "needs recompute_old_logprobs: true (the weight is the training forward's pi_old over the engine's log-probs)");
  need(s.optim.max_tokens_per_mini_batch >= 0, "max_tokens_per_mini_batch", "must not be negative");
  need(s.optim.warmup_ratio >= 0 && s.optim.warmup_ratio <= 1, "warmup_ratio", "must be in [0, 1]");
  need(s.loss.beta >= 0, "beta", "must not be negative");
  need(s.loss.epsilon_low >= 0 && s.loss.epsilon_high >= 0, "epsilon", "must not be negative");
  need(s.data.task != Task::Jsonl || !s.data.train_file.empty(), "train_file", "task jsonl needs train_file");
  need(s.data.task_digits >= 1 && s.data.task_digits <= 9, "task_digits", "must be 1 to 9");
  need(s.data.prompt_format == "template" || s.data.prompt_format == "chat", "prompt_format", "must be template or chat");
  need(s.data.general_share >= 0 && s.data.general_share <= 1, "general_share", "must be in [0, 1]");
  need(s.type != StageType::Distill || s.data.train_file.rfind("stage:", 0) == 0, "train_file",
       "a distill stage learns an earlier stage's data: train_file: stage:NAME (a rejection_sampling stage)");
  need(s.rewards.timeout > 0, "reward_timeout", "must be positive");
  need(s.advantages.max_num_gen_batches >= 1, "max_num_gen_batches", "must be at least 1");
  need(s.moe.aux_loss_alpha >= 0, "aux_loss_alpha", "must not be negative");
  need(s.eval.eval_num_generations >= 0, "eval_num_generations", "must not be negative");
  need(s.checkpoint.save_total_limit >= 0, "save_total_limit", "must not be negative");
  for (int64_t step : s.checkpoint.profile_steps) need(step >= 1, "profile_steps", "steps count from 1");
  need(s.warm_start.sft_steps >= 0 && s.warm_start.sft_batch_size >= 1, "sft_batch_size", "must be at least 1");
  auto is_device = [](const std::string& d) {
    const bool cuda_n = d.rfind("cuda:", 0) == 0 && d.size() > 5 && d.find_first_not_of("0123456789", 5) == std::string::npos;
    return d == "cpu" || d == "cuda" || cuda_n;
  };
  need(is_device(s.model.device), "device", "'" + s.model.device + "' is not a device (cpu, cuda or cuda:N)");
  const std::string& rd = s.rollout.rollout_device;
  need(rd.empty() || is_device(rd), "rollout_device", "'" + rd + "' is not a device (cpu, cuda or cuda:N)");
  need(rd.empty() || s.rollout.async_rollout >= 0, "rollout_device",
       "needs async_rollout: 0 or 1 (the plain loop samples with the training policy itself)");
  // Rewards: the spec, its options and plugins are checked now, not at the first step.
  try {
    rewards::RewardRegistry& registry = rewards::default_registry();  // plugins register where the run finds them
    if (!s.rewards.reward_model.empty()) {
      if (!s.rewards.workers.empty())
        throw Error("reward_model is scored in process; with reward workers, serve it there "
                    "(grpo reward-worker --reward-model DIR)");
      nlohmann::json& o = s.rewards.options["reward_model"];
      if (!o.is_object()) o = nlohmann::json::object();
      if (!o.contains("path")) o["path"] = s.rewards.reward_model;
      if (!o.contains("device")) o["device"] = s.model.device;
    }
    for (const auto& p : s.rewards.plugins) rewards::load_reward_plugin(p, registry);
    if (s.rewards.workers.empty()) {
      rewards::CombinedReward(s.rewards.spec, registry, s.rewards.options);
      for (const auto& [source, spec] : s.rewards.by_source) {
        try {
          rewards::CombinedReward(spec, registry, s.rewards.options);
        } catch (const std::exception& e) {
          throw Error("rewards_by_source '" + source + "': " + e.what());
        }
      }
    } else {  // the workers may serve rewards this process lacks: check the spec's form only
      if (!s.rewards.options.empty() || !s.rewards.plugins.empty())
        throw Error("reward_options and reward_plugins apply in process; reward workers take their own "
                    "(grpo reward-worker --options/--plugin)");
      for (const auto& part : split_list(s.rewards.spec)) {
        size_t colon = part.find(':');
        if (part.empty() || colon == 0) throw Error("'" + s.rewards.spec + "' has an empty reward name");
        if (colon == std::string::npos) continue;
        const std::string w = part.substr(colon + 1);
        size_t used = 0;
        try {
          std::stod(w, &used);
        } catch (const std::exception&) {
        }
        if (used == 0 || used != w.size())
          throw Error("weight '" + w + "' of '" + part.substr(0, colon) + "' is not a number");
      }
    }
  } catch (const std::exception& e) {
    throw Error(where + ": key 'rewards': " + e.what());
  }
}

}  // namespace

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_recipe(read_file(path, int64_t(16) << 20), path, overrides);  // a regular file of sane size
}

namespace {

Recipe read_recipe(const std::string& text, const std::string& path, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error(path + ": not valid YAML: " + e.what());
  }
  if (!root.IsMap()) throw Error(path + ": expected a mapping of settings");

  // The top level: every stage's defaults.
  StageSettings base;
  std::set<std::string> base_given;
  if (root["type"]) {  // the stage type of a one-stage recipe, or every stage's default
    try {
      convert(root["type"], base.type);
    } catch (const std::exception& e) {
      throw Error(path + ": key 'type': " + e.what());
    }
  }
  read_mapping(root, base, base_given, path, {"stages", "type"});

  Recipe r;
  r.path = path;
  std::vector<std::set<std::string>> given;
  if (root["stages"]) {
    const YAML::Node& list = root["stages"];
    if (!list.IsSequence() || list.size() == 0) throw Error(path + ": key 'stages': expected a list of stages");
    std::set<std::string> names;
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string where = path + ": stages[" + std::to_string(i) + "]";
      if (!list[i].IsMap() || !list[i]["name"]) throw Error(where + ": expected a mapping with a 'name'");
      StageSettings s = base;
      std::set<std::string> g = base_given;
      s.name = plain_text(list[i]["name"], where, "a stage's name");
      if (!names.insert(s.name).second) throw Error(where + ": stage name '" + s.name + "' is used twice");
      if (list[i]["type"]) {
        try {
          convert(list[i]["type"], s.type);
        } catch (const Error& e) {
          throw Error(where + ": key 'type': " + e.what());
        }
      }
      read_mapping(list[i], s, g, where, {"name", "type"});
      r.stages.push_back(s);
      given.push_back(g);
    }
  } else {
    r.stages.push_back(base);
    given.push_back(base_given);
  }

  for (const std::string& o : overrides) {
    const size_t eq = o.find('=');
    const std::string where = "override '" + o + "'";
    if (eq == std::string::npos || eq == 0) throw Error(where + ": expected key=value");
    std::string name = o.substr(0, eq), stage;
    YAML::Node value;
    try {
      value = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw Error(where + ": not a YAML value: " + e.msg);
    }
    if (size_t dot = name.find('.'); dot != std::string::npos) {
      std::string prefix = name.substr(0, dot);
      name = name.substr(dot + 1);
      const Key* k = find_key(name);
      if (!(k && k->section == prefix)) stage = prefix;  // not a section: a stage's name
    }
    bool applied = false;
    for (size_t i = 0; i < r.stages.size(); ++i)
      if (stage.empty() || r.stages[i].name == stage) {
        set_key(r.stages[i], given[i], name, value, where);
        applied = true;
      }
    if (!applied) throw Error(where + ": no stage or section named '" + stage + "'");
  }

  for (size_t i = 0; i < r.stages.size(); ++i) {
    const std::string where = r.stages.size() == 1 ? path : path + ": stage '" + r.stages[i].name + "'";
    check(r.stages[i], given[i], where);
    // model_dir / train_file "stage:NAME": the result of an earlier stage of this recipe.
    for (const auto& [key, value] : {std::pair<std::string, std::string>{"model_dir", r.stages[i].model.model_dir},
                                     {"train_file", r.stages[i].data.train_file},
                                     {"reward_model", r.stages[i].rewards.reward_model}}) {
      if (value.rfind("stage:", 0) != 0) continue;
      const std::string name = value.substr(6);
      // train_file names a dataset (rejection_sampling), reward_model a reward model, model_dir a policy.
      auto fits = [&](StageType t) {
        if (key == "train_file") return t == StageType::RejectionSampling;
        if (key == "reward_model") return t == StageType::RewardModel;
        return t != StageType::RejectionSampling && t != StageType::RewardModel;
      };
      bool earlier = false;
      for (size_t j = 0; j < i; ++j) earlier |= r.stages[j].name == name && fits(r.stages[j].type);
      if (!earlier)
        throw Error(where + ": key '" + key + "': '" + value + "' names no earlier stage of this recipe that " +
                    (key == "train_file"     ? "writes a dataset (rejection_sampling)"
                     : key == "reward_model" ? "trains a reward model (reward_model)"
                                             : "trains a model"));
    }
  }
  return r;
}

}  // namespace

std::string to_string(StageType t) {
  switch (t) {
    case StageType::Sft: return "sft";
    case StageType::RejectionSampling: return "rejection_sampling";
    case StageType::RewardModel: return "reward_model";
    case StageType::Distill: return "distill";
    case StageType::Grpo: break;
  }
  return "grpo";
}

Recipe parse_recipe(const std::string& text, const std::string& path, const std::vector<std::string>& overrides) {
  try {
    return read_recipe(text, path, overrides);
  } catch (const YAML::Exception& e) {  // what the checks above do not name more precisely
    throw Error(path + ": " + e.what());
  }
}

std::vector<RecipeKey> recipe_keys() {
  const StageSettings defaults;
  std::vector<RecipeKey> out;
  for (const auto& k : keys()) out.push_back({k.name, k.section, k.get(defaults), k.help});
  return out;
}

std::string describe_recipe_keys() {
  std::ostringstream o;
  std::string section;
  for (const auto& k : recipe_keys()) {
    if (k.section != section) {
      section = k.section;
      o << "\n  " << section << ":\n";
    }
    std::string head = "    " + k.name + " = " + k.default_value;
    o << head << std::string(head.size() < 44 ? 44 - head.size() : 1, ' ') << k.help << "\n";
  }
  return o.str();
}

}  // namespace grpo::trainer

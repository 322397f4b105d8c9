// A recipe: YAML read once into typed settings, checked once, with errors that name the file and the
// key. Keys are flat and follow TRL's GRPOConfig where one exists (`num_generations`, `beta`,
// `epsilon`, `learning_rate`, ...); each belongs to a section (model, data, rewards, warm_start,
// rollout, loss, advantages, optim, moe, eval, checkpoint), and may also be written inside a mapping
// named after its section (`rollout: {kv_cache_mb: 2048}`).
//
// A recipe runs one stage, or a list of them under `stages:` (each a mapping with `name`, `type` and
// its own keys; the top-level keys are every stage's defaults). Overrides `key=value`,
// `section.key=value` or `STAGE.key=value` (from the command line) pass through the same parsing and
// checks as the file. `recipe_keys()` lists every key with its section, default and meaning
// (`grpo train --help`).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "trainer/loss_config.h"
#include "trainer/rejection_filter.h"

namespace grpo::trainer {

// Built-in addition (answers only), built-in addition with worked solutions in the R1 format
// (<think> column sums </think> <answer> sum </answer>: cold-start data), or JSONL files.
enum class Task { Addition, AdditionCot, Jsonl };
enum class LrScheduler { Constant, Cosine };  // after a linear warm-up of warmup_ratio * max_steps
enum class ScaleRewards { Group, Batch, None };
enum class StageType { Grpo, Sft, RejectionSampling, RewardModel, Distill };
enum class RolloutQuantization { None, Fp8 };  // the engine's weights: the policy's own, or FP8 copies

struct ModelSettings {
  std::string model_dir;     // HF checkpoint directory, or "stage:NAME" for an earlier stage's result; or
  std::string model_config;  // a config.json for a random initialisation (seed model_seed)
  uint64_t model_seed = 0;
  std::string device = "cpu";  // cpu | cuda | cuda:N
  bool bf16 = false;           // bf16 compute (rollout, forward, backward) with fp32 master weights
  std::string tokenizer = "builtin:bytes";  // "builtin:bytes", a tokenizer.json, or "" for model_dir's
  // LoRA (PEFT's names): lora_r > 0 freezes the base and trains adapters on lora_target_modules.
  int64_t lora_r = 0;
  double lora_alpha = 16, lora_dropout = 0;
  std::vector<std::string> lora_target_modules = {"all-linear"};
  bool use_rslora = false;
  bool lora_save_merged = false;  // checkpoints also hold the merged full model under merged/
  bool gradient_checkpointing = false;  // recompute each decoder layer in the backward pass (less memory)
  // DeepSeek-V3's multi-token prediction loss weight (lambda): the model's MTP modules learn to
  // predict the tokens 2 .. D+1 places ahead, keeping them fit as speculative-decoding drafts (0 = off).
  double mtp_loss_weight = 0;
};

struct DataSettings {
  Task task = Task::Addition;
  int task_digits = 2;
  int64_t train_size = 4096, eval_size = 256;  // built-in task sizes
  uint64_t data_seed = 1;                      // built-in task problems, and the shuffling order
  std::string train_file, eval_file;           // JSONL (task: jsonl)
  std::string prompt_field = "prompt", answer_field = "answer";
  std::string completion_field = "completion";  // sft: the text the model learns to produce
  std::string answer_delimiter;  // the reference is the text after its last occurrence (GSM8K: "####")
  std::string prompt_template = "{prompt}";  // or "r1_zero" for the R1-Zero template
  std::string prompt_format = "template";    // "chat": the prompt (after prompt_template) as a user message in the chat template
  std::string chat_template;                 // a .jinja file used instead of the model's own chat template
  std::string system_prompt;                 // chat: a system message before each prompt ("" = none)
  std::string messages_field = "messages";   // sft: JSONL field of a whole conversation (chat)
  std::string chosen_field = "chosen", rejected_field = "rejected";  // reward_model: preference pairs
  double general_share = 0;  // built-in tasks: the share of problems tagged data_source "general" (else "math")
  bool shuffle = true;  // a new seeded permutation of the training set each epoch
};

// Supervised fine-tuning (type: sft), on prompt -> completion examples, TRL's SFTConfig names.
struct SftSettings {
  int64_t max_length = 1024;                 // tokens per row (examples are truncated to it)
  bool packing = true;                       // several examples per row, attention kept within each
  int64_t num_train_epochs = 1;              // passes over the data (max_steps > 0 caps the steps)
  int64_t per_device_train_batch_size = 8;   // rows per optimizer step
};

// Rejection sampling (type: rejection_sampling): num_samples completions per training prompt from
// the stage's model, scored by its rewards, filtered (trainer/rejection_filter.h), written as an
// sft dataset. Sampling follows the rollout keys (temperature, top_p, max_completion_length).
struct RejectionSettings {
  int64_t num_samples = 4;  // per prompt
  int64_t max_prompts = 0;  // the first N training prompts (0: all)
};

struct RewardSettings {
  std::string spec = "math";         // "name[:weight],..." e.g. "math,format:0.2"
  std::vector<std::string> workers;  // reward worker addresses; empty = score in process
  nlohmann::json options = nlohmann::json::object();  // per reward: {"math": {"precision": 4}}
  std::vector<std::string> plugins;  // C++ reward plugins (.so) to load
  double timeout = 60;               // seconds a reward worker has for one call before it is retried elsewhere
  std::string token_file, tls_ca;    // what the reward workers require (rpc/security.h)
  std::map<std::string, std::string> by_source;  // data source -> spec (trainer/source_rewards.h)
  std::string source_field = "data_source";       // the dataset column naming the source
  std::string reward_model;  // a reward-model directory (or stage:NAME) scored in process as the reward `reward_model`
};

struct WarmStartSettings {  // supervised steps on prompt -> answer before GRPO (a weak base from scratch)
  int64_t sft_steps = 0, sft_batch_size = 64;
  double sft_learning_rate = 1e-3;
};

struct RolloutSettings {
  int64_t per_step_prompts = 16, num_generations = 8, max_completion_length = 16;
  double temperature = 1.0, top_p = 1.0;
  int64_t kv_cache_mb = 0;  // the engine's KV cache budget; 0 = 1024 on CPU, 4096 on CUDA
  int64_t max_batch = 0;    // sequences decoded together; 0 = max(64, per_step_prompts * num_generations)
  bool recompute_old_logprobs = false;  // pi_old from the training forward instead of the engine (verl's way)
  // Asynchronous rollout on a copy of the policy, in a second thread (a second CUDA stream), with
  // this staleness bound: 1 = one-step-off (step t+1's samples are drawn by the weights before step
  // t's update while step t trains); 0 = the same machinery started after the update (equals the
  // synchronous loop); -1 = off.
  int64_t async_rollout = -1;
  // With async_rollout: the device of the policy's copy that samples (cpu, cuda or cuda:N; empty:
  // the training device). On a second GPU the rollout no longer shares the trainer's.
  std::string rollout_device;
  // The engine and the training forward both compute through the batch-invariant forward
  // (model/batch_invariant.h): the rollout's log-probs equal the training forward's to the bit.
  bool exact_rollout = false;
  // With exact_rollout: the update's first pass over a batch sampled with the weights it trains
  // takes the engine's log-probs and routing records for the batch-invariant forward's, which they
  // equal to the bit, and skips that forward; every this many steps (from step 1) it runs the
  // forward anyway and reports rollout_logprob_diff from it. 1: every step; 0: never.
  int64_t exact_rollout_check_every = 10;
  // Speculative decoding with the model's MTP module as the draft (rollout/speculative.h): samples
  // keep the policy's distribution; the module's acceptance decides the speed-up.
  bool speculative_mtp = false;
  // Drafts per speculative step (the module chained on its own drafts); a step keeps 1 to this + 1 tokens.
  int64_t num_speculative_tokens = 1;
  // fp8: the engine decodes with FP8 copies of the policy's weights (rollout/engine.h), requantized
  // after every update; the trainer still trains the bf16 weights. Pair with rollout_is for the drift.
  RolloutQuantization quantization = RolloutQuantization::None;
};

struct AdvantageSettings {
  ScaleRewards scale_rewards = ScaleRewards::Group;
  bool mask_truncated_completions = false;
  bool dynamic_sampling = false;    // DAPO: drop groups whose rewards are all equal, sample more
  int64_t max_num_gen_batches = 4;  // rollout batches per step at most, to refill dropped groups
};

struct OptimSettings {
  int64_t max_steps = 100, num_iterations = 1;
  int64_t mini_batch_size = 0;  // sequences per forward/backward, gradients accumulated (0 = all)
  int64_t max_tokens_per_mini_batch = 0;  // or mini-batches by padded tokens instead (0 = off)
  double learning_rate = 1e-4, weight_decay = 0.0, max_grad_norm = 1.0, warmup_ratio = 0.0;
  LrScheduler lr_scheduler_type = LrScheduler::Constant;
  int64_t ref_model_sync_steps = 0;  // copy the policy into the reference every K steps (0 = never)
  uint64_t seed = 0;
  // Several ranks: 1 shards the AdamW state over the ranks (each parameter's moments live on one
  // rank, which updates it and broadcasts it), 2 also reduces each gradient to that rank only.
  int64_t zero_stage = 0;
  // Several ranks: gradient collectives start bucket by bucket during the backward pass (zero_stage
  // 0, and 2 with bf16), in buckets of about bucket_cap_mb MiB, as PyTorch DDP's.
  bool overlap_grad_reduce = true;
  double bucket_cap_mb = 25;
  // Several ranks: seconds a collective (or joining the job) waits for the other ranks before it
  // fails with an error, as TrainingArguments' ddp_timeout. The job takes the largest of its stages'.
  double ddp_timeout = 1800;
};

struct MoESettings {
  double bias_update_speed = 0.001;  // aux-loss-free balancing of e_score_correction_bias (0 = off)
  double aux_loss_alpha = 0.0;       // DeepSeek-V3's sequence-wise balance loss (0 = off)
  // Routing replay: the rollout engine records the experts that served every token, and the policy's
  // training forwards (recomputed pi_old and the update) impose them, so each sample's gradient
  // reaches the experts that produced it. The router's weights still come from the training forward.
  bool routing_replay = false;
};

struct EvalSettings {
  int64_t eval_every = 25;
  int64_t eval_num_generations = 0;  // k samples per eval prompt: mean reward, pass@k (0 = greedy only)
};

struct CheckpointSettings {
  int64_t save_every = 50, save_total_limit = 0;  // keep the newest N checkpoint-* (0 = all)
  bool save_bf16 = false;                         // also write model weights in bf16 under bf16/
  int64_t logging_steps = 1;                      // console lines when not on a terminal
  // grpo, sft: steps run under the PyTorch profiler (trainer/step_profile.h): Chrome traces and a
  // table of where each phase's time went, under <output>/profile/.
  std::vector<int64_t> profile_steps;
};

// Everything one stage runs with.
struct StageSettings {
  std::string name = "grpo";
  StageType type = StageType::Grpo;
  ModelSettings model;
  DataSettings data;
  SftSettings sft;
  RejectionSettings rejection;
  RejectionFilter filter;
  RewardSettings rewards;
  WarmStartSettings warm_start;
  RolloutSettings rollout;
  LossConfig loss;
  AdvantageSettings advantages;
  OptimSettings optim;
  MoESettings moe;
  EvalSettings eval;
  CheckpointSettings checkpoint;
};

std::string to_string(StageType t);

struct Recipe {
  std::string path;  // the recipe file, for messages
  std::vector<StageSettings> stages;
};

// Reads, overrides and checks a recipe. `overrides` are "key=value", "section.key=value" or
// "STAGE.key=value"; values are YAML. Throws grpo::Error naming the file (or the override) and key.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from a recipe's text; `path` names it in messages.
Recipe parse_recipe(const std::string& text, const std::string& path, const std::vector<std::string>& overrides = {});

struct RecipeKey {
  std::string name, section, default_value, help;
};
// Every key a stage reads, in section order.
std::vector<RecipeKey> recipe_keys();
// The keys as a table for `--help`: section, key, default, meaning.
std::string describe_recipe_keys();

}  // namespace grpo::trainer

// The R1-Zero loop: sample G completions per prompt with the rollout engine (sharing the policy's
// tensors), score them with the rewards, compute group-normalised advantages, and update the
// policy with the GRPO objective; evaluate, checkpoint and resume.
//
// A recipe (YAML) names the model, the data, the prompt template, the rewards and the settings;
// keys follow TRL's GRPOConfig where one exists. See recipes/r1_zero_tiny.yaml.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace grpo::trainer {

struct Recipe {
  std::string path;  // the recipe file, for error messages
  // model
  std::string model_dir;          // HF checkpoint; or
  std::string model_config;       // config.json for a random initialisation
  uint64_t model_seed = 0;
  std::string device = "cpu";     // cpu | cuda | cuda:N
  bool bf16 = false;              // bf16 compute (rollout, forward, backward) with fp32 master weights
  std::string tokenizer = "builtin:bytes";  // "builtin:bytes" or a tokenizer.json path ("" = model_dir's)
  // data
  std::string task = "addition";  // built-in synthetic task, or "jsonl"
  int task_digits = 2;
  int64_t train_size = 4096, eval_size = 256;
  uint64_t data_seed = 1;
  std::string train_file, eval_file, prompt_field = "prompt", answer_field = "answer";
  std::string answer_delimiter;  // when set, the reference is the text after its last occurrence (GSM8K: "####")
  std::string prompt_template = "{prompt}";  // "r1_zero" for the R1-Zero template
  // rewards
  std::string rewards = "math";
  std::string reward_workers;       // "host:port,..." = score through reward workers; "" = in process
  // warm start (supervised, on the answers)
  int64_t sft_steps = 0, sft_batch_size = 64;
  double sft_learning_rate = 1e-3;
  // GRPO (TRL names)
  int64_t max_steps = 100, per_step_prompts = 16, num_generations = 8, max_completion_length = 16;
  double temperature = 1.0, top_p = 1.0, learning_rate = 1e-4, beta = 0.0, epsilon = 0.2, epsilon_high = 0.2;
  double weight_decay = 0.0, max_grad_norm = 1.0, warmup_ratio = 0.0;
  std::string lr_scheduler_type = "constant", loss_type = "dapo", kl_estimator = "k3";
  int64_t num_iterations = 1;
  int64_t mini_batch_size = 0;        // sequences per forward/backward, gradients accumulated (0 = all)
  bool recompute_old_logprobs = false;  // pi_old from the training forward instead of the rollout engine (verl's way)
  int64_t max_num_gen_batches = 4;    // dynamic sampling: rollout batches per step at most, to refill dropped groups
  int64_t ref_model_sync_steps = 0;   // copy the policy into the reference every K steps (0 = never)
  double bias_update_speed = 0.001;   // aux-loss-free MoE balancing of e_score_correction_bias (0 = off)
  double aux_loss_alpha = 0.0;        // sequence-wise MoE balance loss weight (DeepSeek-V3 uses 1e-4; 0 = off)
  std::string scale_rewards = "group";  // group | batch | none (also true = group, false = none)
  bool mask_truncated_completions = false, dynamic_sampling = false;
  // bookkeeping
  int64_t eval_every = 25, save_every = 50, logging_steps = 1;
  int64_t eval_num_generations = 0;   // k samples per eval prompt at `temperature`: mean reward, pass@k (0 = greedy only)
  uint64_t seed = 0;
};

// Reads and checks a recipe; errors name the file and the key.
Recipe load_recipe(const std::string& path);

struct TrainOptions {
  std::string output_dir;
  bool resume = false;
};

// Runs the recipe. Returns 0; throws grpo::Error on bad input.
int train(const Recipe& recipe, const TrainOptions& options);

}  // namespace grpo::trainer

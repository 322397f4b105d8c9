// The GRPO stage's trainer, private to trainer/: one class whose parts live in four files,
//   grpo_trainer.cpp     set-up, the step loop, checkpoints and resume, the reference, data-parallel agreement;
//   grpo_warm_start.cpp  the supervised warm start and the held-out evaluation;
//   grpo_rollout.cpp     a step's samples: rollout, rewards, group advantages, dynamic sampling;
//   grpo_update.cpp      the policy update: mini-batches, the GRPO loss, gradients (across ranks), AdamW.
#pragma once

#include <ATen/ATen.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "rewards/rpc.h"
#include "rollout/engine.h"
#include "trainer/dataset.h"
#include "trainer/policy.h"
#include "trainer/prompt_format.h"
#include "trainer/recipe.h"
#include "trainer/run_log.h"
#include "trainer/run_state.h"
#include "trainer/out_of_memory.h"
#include "trainer/overlapped_reduce.h"
#include "trainer/step_metrics.h"
#include "trainer/step_profile.h"
#include "trainer/zero_shards.h"

namespace grpo::trainer {

using Clock = std::chrono::steady_clock;

struct Stopped {};  // thrown after the checkpoint of a stop request is saved; run_grpo_stage returns false

inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Pads per-sequence vectors (1-D tensors) into (B, T) and a mask.
std::pair<at::Tensor, at::Tensor> pad(const std::vector<at::Tensor>& rows, int64_t T, at::ScalarType dtype);

class GrpoTrainer {
 public:
  // `comm`: the job's other ranks (null on one rank).
  GrpoTrainer(const StageSettings& s, const std::string& recipe_path, const std::string& out, bool resume,
              dist::Communicator* comm);
  void run();

 private:
  std::shared_ptr<model::CausalLM> base_model(at::ScalarType dtype) const;  // the policy before any training
  void resume();
  void save(const std::string& name);
  void build_reference();
  void warm_start();
  EvalResult evaluate();
  // The step's samples from `engine`, drawing prompts from data position `position` on.
  RolloutBatch sample(int64_t step, rollout::Engine& engine, int64_t position);
  // The step's batch: sampled now, or (async_rollout) the one drawn in the background, after
  // launching the next one when one-step-off.
  RolloutBatch next_batch(int64_t step);
  void launch_rollout(int64_t step, int64_t position);
  at::Device rollout_device() const;  // async_rollout: where the sampling copy lives
  UpdateStats update(const RolloutBatch& b);
  double learning_rate(int64_t step) const;
  std::vector<rewards::RewardResult> score(const std::vector<rewards::RewardItem>& items, const std::string& what);
  void accumulate_gradients();
  void sync_policy();
  std::vector<int64_t> encode(const std::string& s, bool special) const;
  rollout::Request request(const Example& ex, int64_t index) const;
  rewards::RewardItem reward_item(const Example& ex, const rollout::Completion& c) const;
  // Data parallelism (several ranks): rank 0 logs, evaluates and writes checkpoints; every rank
  // rolls out its share of the step's prompts and the gradients are summed across ranks.
  bool main_rank() const { return !comm_ || comm_->is_main(); }
  OverlappedReduce* overlapped_reduce();
  bool stop_everywhere();

  const StageSettings s_;
  const std::string recipe_path_, out_;
  const at::Device device_;
  const at::ScalarType compute_dtype_;
  Policy pol_;                     // what the members below are taken from
  std::unique_ptr<PromptFormat> format_;
  std::string config_text_;        // the policy's config.json
  std::shared_ptr<model::CausalLM> master_;  // fp32 weights: what the optimizer updates and checkpoints hold
  std::shared_ptr<model::CausalLM> policy_;  // what computes: master_ itself in fp32, a bf16 copy with bf16
  std::shared_ptr<model::CausalLM> ref_;     // frozen reference (beta > 0)
  std::shared_ptr<const text::Tokenizer> tok_;
  int64_t eos_ = -1;
  Dataset data_;
  std::unique_ptr<PromptOrder> order_;
  std::unique_ptr<rewards::Scorer> scorer_;
  std::unique_ptr<torch::optim::AdamW> optimizer_, sft_optimizer_;
  std::mt19937_64 sft_rng_;
  std::unique_ptr<rollout::Engine> engine_;
  RunState st_;
  CheckpointStore store_;
  std::unique_ptr<RunLog> log_;
  std::string resumed_from_;
  dist::Communicator* comm_;  // null in a single-process run
  // ZeRO (zero_stage 1, 2): each trainable parameter has an owner rank, which holds its AdamW
  // moments and updates it; the others receive it by broadcast.
  // The recipe keys, with this run's values, that bound the rollout's and the update's memory: what
  // a CUDA out-of-memory error in either phase names (trainer/out_of_memory.h).
  std::vector<std::string> rollout_remedies_, update_remedies_;
  std::unique_ptr<ZeroShards> zero_;
  std::unique_ptr<OverlappedReduce> overlap_;  // several ranks: the gradient exchange during backward
  StepProfiler profiler_;                      // profile_steps
  // async_rollout: the policy's copy that samples in a second thread, its engine, and the batch it
  // is drawing (declared last: destroyed, so waited for, before anything it uses).
  std::shared_ptr<model::CausalLM> rollout_model_;
  std::unique_ptr<rollout::Engine> rollout_engine_;
  std::future<RolloutBatch> pending_;
};

}  // namespace grpo::trainer

#include "trainer/train.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>

#include "dist/communicator.h"

#include "trainer/grpo_trainer.h"
#include "trainer/pipeline.h"
#include "trainer/rejection_sampling.h"
#include "trainer/reward_model_trainer.h"
#include "trainer/run_log.h"
#include "trainer/run_state.h"
#include "trainer/sft_trainer.h"
#include "util/error.h"
#include "util/files.h"

namespace grpo::trainer {

namespace {

std::atomic<bool> g_stop{false};

bool run_stage(const StageSettings& settings, const std::string& recipe_path, const std::string& dir, bool resume,
               dist::Communicator* comm) {
  StageSettings s = settings;
  if (auto env = dist::read_dist_env(); env && s.model.device == "cuda")
    s.model.device = "cuda:" + std::to_string(env->local_rank);  // one GPU per local rank
  bool finished = false;
  switch (s.type) {
    case StageType::Sft:
    case StageType::Distill: finished = run_sft_stage(s, recipe_path, dir, resume, comm); break;
    case StageType::RewardModel: finished = run_reward_model_stage(s, recipe_path, dir, resume, comm); break;
    case StageType::RejectionSampling: finished = run_rejection_sampling_stage(s, recipe_path, dir, resume, comm); break;
    case StageType::Grpo: finished = run_grpo_stage(s, recipe_path, dir, resume, comm); break;
  }
  if (comm) comm->barrier();  // the stage's files are all written before any rank reads them
  return finished;
}

// With several ranks, one connection for the whole job: NCCL when a stage runs on CUDA (one GPU per
// local rank), else Gloo.
std::unique_ptr<dist::Communicator> connect(const Recipe& recipe) {
  auto env = dist::read_dist_env();
  if (!env) return nullptr;
  at::Device device = at::kCPU;
  double timeout = 0;
  for (const auto& s : recipe.stages) {
    if (at::Device(s.model.device).is_cuda()) device = at::Device(at::kCUDA, env->local_rank);
    timeout = std::max(timeout, s.optim.ddp_timeout);
  }
  return dist::Communicator::connect(*env, device, std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
}

// Whether `dir` holds files, as every rank sees it before any of them writes there.
bool holds_files(const std::string& dir, dist::Communicator* comm) {
  const bool files = !list_directory(dir).empty();
  if (comm) comm->barrier();
  return files;
}

}  // namespace

void train(const Recipe& recipe, const TrainOptions& options) {
  std::string out = options.output_dir;
  if (out.empty()) {
    std::string stem = std::filesystem::path(recipe.path).stem().string();
    out = "runs/" + (stem.empty() ? std::string("grpo") : stem);
  }
  std::unique_ptr<dist::Communicator> comm = connect(recipe);
  if (recipe.stages.size() == 1) {
    run_stage(recipe.stages[0], recipe.path, out, options.resume, comm.get());
    return;
  }
  // Several stages: OUT/<stage>/ each, and OUT/pipeline.json with every stage's status and result.
  if (!options.resume && holds_files(out, comm.get()))
    throw Error(out + " already holds files of a run: pass --resume to continue it, or choose another --output");
  Pipeline pipeline(out, recipe, options.resume, !comm || comm->is_main());
  for (size_t i = 0; i < recipe.stages.size(); ++i) {
    if (pipeline.done(i)) continue;
    StageSettings stage = recipe.stages[i];
    const std::string& m = stage.model.model_dir;
    if (m.rfind("stage:", 0) == 0) stage.model.model_dir = pipeline.output_of(m.substr(6));
    const std::string& f = stage.data.train_file;
    if (f.rfind("stage:", 0) == 0) {  // the dataset a rejection-sampling stage wrote
      const std::string source = f.substr(6);
      const bool pairs = stage.type == StageType::RewardModel;  // its preference pairs, else its kept samples
      stage.data.train_file = pipeline.output_of(source);
      if (pairs) stage.data.train_file = std::filesystem::path(stage.data.train_file).replace_filename("pairs.jsonl");
      if (std::filesystem::file_size(stage.data.train_file) == 0)
        throw Error("stage '" + source + "' " + (pairs ? "wrote no preference pair" : "kept no sample") +
                    " (its stats.json says why): stage '" + stage.name + "' has nothing to learn");
      stage.data.task = Task::Jsonl;
      stage.data.chosen_field = "chosen";
      stage.data.rejected_field = "rejected";
      stage.data.prompt_field = "prompt";
      stage.data.completion_field = "completion";
      stage.data.answer_field = "answer";
      stage.data.answer_delimiter = "";  // the dataset holds the extracted answer
      stage.data.eval_file = "";         // the recipe's eval file is in the task's own format, not this one's
      stage.data.prompt_field = "prompt";
      stage.data.messages_field = "messages";
    }
    std::string& rm = stage.rewards.reward_model;
    if (rm.rfind("stage:", 0) == 0) {
      rm = pipeline.output_of(rm.substr(6));
      stage.rewards.options["reward_model"]["path"] = rm;
    }
    const std::string dir = out + "/" + stage.name;
    const bool resume_stage = options.resume && holds_files(dir, comm.get());
    pipeline.start(i);
    if (!run_stage(stage, recipe.path, dir, resume_stage, comm.get()) || stop_requested()) return;
    pipeline.finish(i, stage.type == StageType::RejectionSampling ? dir + "/data.jsonl" : CheckpointStore(dir, 0).latest(),
                    final_metrics(dir));
  }
}

bool checkpoint_or_stop(int64_t step, int64_t total, int64_t save_every, const std::string& label, RunLog& log,
                        const std::function<void()>& save) {
  const bool stopping = stop_requested() && step < total;
  if ((save_every > 0 && step % save_every == 0) || step == total || stopping) save();
  if (stopping)
    log.line("stopped after " + label + std::to_string(step) + "; saved checkpoint-" + std::to_string(step) +
             "; continue with --resume");
  return !stopping;
}

void request_stop() { g_stop.store(true); }
bool stop_requested() { return g_stop.load(); }

}  // namespace grpo::trainer

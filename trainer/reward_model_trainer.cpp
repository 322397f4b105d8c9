#include "trainer/reward_model_trainer.h"

#include <c10/core/GradMode.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <chrono>
#include <cmath>

#include "io/safetensors.h"
#include "model/checkpoint.h"
#include "model/reward_model.h"
#include "trainer/data_parallel.h"
#include "trainer/device_scalars.h"
#include "trainer/out_of_memory.h"
#include "trainer/policy.h"
#include "trainer/preferences.h"
#include "trainer/prompt_format.h"
#include "trainer/run_log.h"
#include "trainer/run_state.h"
#include "trainer/train.h"
#include "trainer/zero_shards.h"
#include "util/error.h"
#include "util/files.h"

namespace grpo::trainer {
namespace {

using at::Tensor;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct TokenPair {
  std::vector<int64_t> chosen, rejected;  // prompt + completion ids
};

class RewardModelStage {
 public:
  RewardModelStage(const StageSettings& s, const std::string& recipe_path, const std::string& out, bool resume,
                   dist::Communicator* comm);
  bool run();

 private:
  std::vector<TokenPair> tokenise(const std::vector<PreferencePair>& pairs, int64_t* skipped) const;
  // Mean loss, accuracy and margin of `pairs` (no graph).
  json evaluate(const std::vector<TokenPair>& pairs);
  void save();
  void resume();

  const StageSettings s_;
  const std::string recipe_path_, out_;
  Policy pol_;
  torch::nn::Linear score_{nullptr};
  int64_t pad_ = 0;
  std::vector<TokenPair> train_, eval_;
  std::unique_ptr<PromptOrder> order_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t total_steps_ = 0;
  RunState st_;
  CheckpointStore store_;
  std::unique_ptr<RunLog> log_;
  std::string resumed_from_;
  // Several ranks (data parallel): each step's pairs split over the ranks, the loss a mean over
  // every rank's pairs, gradients summed before clipping; rank 0 logs and writes checkpoints.
  StageRanks ranks_;
  std::unique_ptr<ZeroShards> zero_;  // zero_stage 1 and 2: each tensor's AdamW state (and fp32 master) on its owner
};

RewardModelStage::RewardModelStage(const StageSettings& s, const std::string& recipe_path, const std::string& out,
                                   bool resume_run, dist::Communicator* comm)
    : s_(s), recipe_path_(recipe_path), out_(out), store_(out, s.checkpoint.save_total_limit), ranks_(comm) {
  if (ranks_.main() && !resume_run && !list_directory(out_).empty())
    throw Error(out_ + " already holds files of a run: pass --resume to continue it, or choose another --output");
  if (ranks_.main()) make_directories(out_);
  torch::manual_seed(s_.optim.seed);
  pol_ = load_policy(s_, recipe_path_, /*without_lm_head=*/true);
  pad_ = model::reward_pad_token_id(pol_.config_text, pol_.master->config());
  // The head: the start checkpoint's when it is a reward model already, else a fresh one.
  bool head_loaded = false;
  if (!s_.model.model_dir.empty() && io::SafetensorsCheckpoint::open_dir(s_.model.model_dir).find("score.weight")) {
    score_ = model::load_reward_model(s_.model.model_dir, {at::kFloat, at::Device(s_.model.device)}).score;
    head_loaded = true;
  }
  if (!head_loaded) score_ = model::new_score_head(*pol_.master, s_.model.model_seed + 1);

  PreferenceData data = load_preferences(s_.data, recipe_path_);
  int64_t skipped = 0;
  train_ = tokenise(data.train, &skipped);
  eval_ = tokenise(data.eval, &skipped);
  if (train_.empty()) throw Error(recipe_path_ + ": stage '" + s_.name + "': no preference pair fits max_length");
  if (ranks_.main())
    fprintf(stderr, "grpo train: %s: %zu training and %zu held-out preference pairs%s\n", s_.name.c_str(), train_.size(),
          eval_.size(), skipped ? (", " + std::to_string(skipped) + " longer than max_length skipped").c_str() : "");
  order_ = std::make_unique<PromptOrder>(train_.size(), s_.data.shuffle, s_.data.data_seed);
  // per_device_train_batch_size pairs per rank and step.
  const int64_t B = s_.sft.per_device_train_batch_size * ranks_.world(), positions = (int64_t)train_.size() * s_.sft.num_train_epochs;
  total_steps_ = (positions + B - 1) / B;
  if (s_.optim.max_steps > 0) total_steps_ = std::min(total_steps_, s_.optim.max_steps);

  std::vector<Tensor> params = pol_.master->parameters();
  params.push_back(score_->weight);
  zero_ = std::make_unique<ZeroShards>(comm, s_.optim.zero_stage, pol_, std::vector<Tensor>{score_->weight});
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      zero_->optimized(pol_), torch::optim::AdamWOptions(s_.optim.learning_rate).weight_decay(s_.optim.weight_decay).betas({0.9, 0.999}));
  if (resume_run) resume();
  std::vector<Tensor> start = params;  // every rank starts from rank 0's weights
  for (auto& t : pol_.master->buffers()) start.push_back(t);
  ranks_.broadcast_from_main(start);
  pol_.sync();
  const std::string sharded = zero_->shard_master(pol_);  // every rank holds the same weights now
  log_ = std::make_unique<RunLog>(ranks_.main() ? out_ : "", resumed_from_.empty() ? -1 : st_.step, s_.checkpoint.logging_steps);
  if (!resumed_from_.empty()) log_->line("resumed from " + resumed_from_ + " (step " + std::to_string(st_.step) + ")");
  if (!sharded.empty()) log_->line(s_.name + ": " + sharded);
}

std::vector<TokenPair> RewardModelStage::tokenise(const std::vector<PreferencePair>& pairs, int64_t* skipped) const {
  PromptFormat format(s_.data, pol_);
  std::vector<TokenPair> out;
  for (const auto& p : pairs) {
    std::vector<int64_t> prompt = format.prompt_ids(p.prompt);
    TokenPair t{prompt, prompt};
    for (auto [text, ids] : {std::pair{&p.chosen, &t.chosen}, std::pair{&p.rejected, &t.rejected}}) {
      std::vector<int64_t> c = pol_.encode(*text, false);
      ids->insert(ids->end(), c.begin(), c.end());
    }
    if ((int64_t)std::max(t.chosen.size(), t.rejected.size()) > s_.sft.max_length) {
      ++*skipped;
      continue;
    }
    out.push_back(std::move(t));
  }
  return out;
}

// Rewards of chosen and rejected sequences of `pairs`, in one batch: (N) and (N).
std::pair<Tensor, Tensor> pair_rewards(model::CausalLM& backbone, const torch::nn::Linear& score, int64_t pad,
                                       const std::vector<const TokenPair*>& pairs) {
  model::RewardModel rm;
  rm.backbone = std::shared_ptr<model::CausalLM>(&backbone, [](model::CausalLM*) {});
  rm.score = score;
  rm.pad_token_id = pad;
  std::vector<std::vector<int64_t>> seqs;
  for (const auto* p : pairs) seqs.push_back(p->chosen);
  for (const auto* p : pairs) seqs.push_back(p->rejected);
  Tensor r = rm.rewards(seqs);
  const int64_t n = (int64_t)pairs.size();
  return {r.narrow(0, 0, n), r.narrow(0, n, n)};
}

json RewardModelStage::evaluate(const std::vector<TokenPair>& pairs) {
  at::NoGradGuard g;
  double loss = 0, right = 0, margin = 0;
  DeviceScalars sums;  // read once, after every batch
  const size_t B = (size_t)s_.sft.per_device_train_batch_size;
  const auto [first, last] = ranks_.share((int64_t)pairs.size());  // each rank its share, summed below
  for (size_t i = first; i < (size_t)last; i += B) {
    std::vector<const TokenPair*> batch;
    for (size_t j = i; j < std::min((size_t)last, i + B); ++j) batch.push_back(&pairs[j]);
    auto [c, r] = pair_rewards(*pol_.compute, score_, pad_, batch);
    Tensor d = c - r;
    sums.add(at::stack({at::log_sigmoid(d).sum().to(at::kDouble), d.gt(0).sum().to(at::kDouble), d.sum().to(at::kDouble)}));
  }
  const std::vector<double> per_batch = sums.read();  // (log-sigmoid sum, right, margin) per batch, in order
  for (size_t i = 0; i < per_batch.size(); i += 3) {
    loss -= per_batch[i];
    right += per_batch[i + 1];
    margin += per_batch[i + 2];
  }
  const auto v = ranks_.sum({loss, right, margin});
  loss = v[0];
  right = v[1];
  margin = v[2];
  const double n = std::max<double>(1, pairs.size());
  return {{"loss", loss / n}, {"accuracy", right / n}, {"margin", margin / n}};
}

void RewardModelStage::save() {
  auto write = [&](const std::string& dir) {
    model::save_reward_model(*pol_.master, score_->weight, pol_.config_text, pad_, dir);
    write_hub_files(pol_.hub, dir);
    if (s_.checkpoint.save_bf16) {
      model::save_reward_model(*pol_.master, score_->weight, pol_.config_text, pad_, dir + "/bf16", at::kBFloat16);
      write_hub_files(pol_.hub, dir + "/bf16");
    }
    // How prompts were formatted, so that the reward `reward_model` scores as the stage trained.
    json format = {{"prompt_template", s_.data.prompt_template},
                   {"prompt_format", s_.data.prompt_format},
                   {"system_prompt", s_.data.system_prompt}};
    write_file_atomic(dir + "/grpo_reward_model.json", format.dump(2) + "\n");
    torch::save(*optimizer_, dir + "/optimizer.pt");
    json j = to_json(st_);
    j["recipe"] = recipe_path_;
    j["stage_type"] = "reward_model";
    j["total_steps"] = total_steps_;
    j["world_size"] = ranks_.world();  // the ranks split each step's pairs: resume with as many
    j["zero_stage"] = zero_->stage();
    write_file_atomic(dir + "/trainer_state.json", j.dump(2) + "\n");
  };
  zero_->save(store_, "checkpoint-" + std::to_string(st_.step), pol_, write,
              [&](const std::string& dir) { torch::save(*optimizer_, zero_->optimizer_file(dir)); });
}

void RewardModelStage::resume() {
  const std::string dir = store_.resume_point();
  if (dir.empty()) return;
  resumed_from_ = dir;
  model::RewardModel saved = model::load_reward_model(dir, {at::kFloat, at::kCPU});
  model::copy_weights(*pol_.master, *saved.backbone);
  {
    at::NoGradGuard g;
    score_->weight.copy_(saved.score->weight);
  }
  st_ = read_run_state(dir + "/trainer_state.json");
  ranks_.check_resumable(dir);
  torch::load(*optimizer_, zero_->resume_optimizer_file(dir));
}

bool RewardModelStage::run() {
  const int64_t B = s_.sft.per_device_train_batch_size * ranks_.world(), total_positions = (int64_t)train_.size() * s_.sft.num_train_epochs;
  if (st_.step == 0 && resumed_from_.empty() && !eval_.empty()) {
    json e = evaluate(eval_);
    log_->line(s_.name + ": eval_accuracy " + std::to_string(e["accuracy"].get<double>()) + " before training");
    log_->metrics({{"step", 0}, {"eval_loss", e["loss"]}, {"eval_accuracy", e["accuracy"]}, {"eval_margin", e["margin"]}}, 0);
  }
  const auto t_start = Clock::now();
  const int64_t start_step = st_.step;
  while (st_.step < total_steps_) {
    const int64_t step = st_.step + 1;
    const double lr = scheduled_learning_rate(s_.optim, step, total_steps_);
    for (auto& g : optimizer_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    const int64_t p0 = st_.step * B, p1 = std::min(total_positions, step * B);
    const auto [first, last] = ranks_.share(p1 - p0);  // this rank's pairs of the step
    std::vector<const TokenPair*> pairs;
    for (int64_t p = p0 + first; p < p0 + last; ++p) pairs.push_back(&train_[order_->at(p)]);
    const double step_pairs = (double)(p1 - p0);  // over every rank
    const int64_t mb = s_.optim.mini_batch_size > 0 ? s_.optim.mini_batch_size : std::max<int64_t>(1, (int64_t)pairs.size());
    const auto t0 = Clock::now();
    optimizer_->zero_grad();
    double loss = 0, right = 0, margin = 0, tokens = 0;
    DeviceScalars sums;  // (loss, right, margin) per micro-batch, read once after the last
    const int64_t mine = ((int64_t)pairs.size() + mb - 1) / mb;
    const int64_t passes = zero_->passes(pol_, mine);  // a rank with fewer runs empty ones
    // A GPU out of memory: the error names the keys that bound a micro-batch (trainer/out_of_memory.h).
    with_memory_advice(s_.name + " step " + std::to_string(step), supervised_memory_remedies(s_), [&] {
      for (int64_t pass = 0; pass < passes; ++pass) {
        if (pass >= mine) {
          zero_->after_pass(pol_);
          continue;
        }
        const size_t i = (size_t)(pass * mb);
        std::vector<const TokenPair*> part(pairs.begin() + i, pairs.begin() + std::min(pairs.size(), i + (size_t)mb));
        auto [c, r] = pair_rewards(*pol_.compute, score_, pad_, part);
        Tensor d = c - r;
        Tensor l = -at::log_sigmoid(d).sum() / step_pairs;
        l.backward();
        zero_->after_pass(pol_);
        sums.add(at::stack({l.detach().to(at::kDouble), d.gt(0).sum().to(at::kDouble), d.detach().sum().to(at::kDouble)}));
        for (const auto* p : part) tokens += (double)(p->chosen.size() + p->rejected.size());
      }
    });
    const std::vector<double> per_batch = sums.read();
    for (size_t i = 0; i < per_batch.size(); i += 3) {
      loss += per_batch[i];
      right += per_batch[i + 1];
      margin += per_batch[i + 2];
    }
    // The step's gradients where this rank's optimizer reads them (every rank's summed), clipped.
    const double norm = zero_->reduce_and_clip(pol_, s_.optim.max_grad_norm);
    const auto v = ranks_.sum({loss, right, margin, tokens});
    loss = v[0];
    right = v[1];
    margin = v[2];
    tokens = v[3];
    if (!std::isfinite(norm) || !std::isfinite(loss))
      throw Error(s_.name + " step " + std::to_string(step) + ": the loss (" + std::to_string(loss) +
                  ") or gradient norm (" + std::to_string(norm) + ") is not finite; stopped before the update");
    optimizer_->step();
    zero_->share_weights(pol_);
    const double t_step = seconds_since(t0);
    st_.step = step;
    st_.position = std::min(total_positions, step * B);
    st_.num_tokens += (int64_t)tokens;
    json m = {{"step", step},
              {"loss", loss},
              {"accuracy", right / step_pairs},
              {"margin", margin / step_pairs},
              {"learning_rate", lr},
              {"grad_norm", norm},
              {"epoch", (double)st_.position / train_.size()},
              {"num_tokens", st_.num_tokens},
              {"tokens_per_second", tokens / std::max(t_step, 1e-9)}};
    const bool eval_now = s_.eval.eval_every > 0 && (step % s_.eval.eval_every == 0 || step == total_steps_);
    if (eval_now && !eval_.empty()) {
      json e = evaluate(eval_);
      m["eval_loss"] = e["loss"];
      m["eval_accuracy"] = e["accuracy"];
      m["eval_margin"] = e["margin"];
    }
    log_->metrics(m, step);
    const double per_step = seconds_since(t_start) / (step - start_step);
    char buf[220];
    snprintf(buf, sizeof buf, "%s %lld/%lld  loss %.4f  accuracy %.2f  lr %.2e  %s elapsed, ETA %s", s_.name.c_str(),
             (long long)step, (long long)total_steps_, loss, m["accuracy"].get<double>(), lr,
             format_duration(seconds_since(t_start)).c_str(), format_duration(per_step * (total_steps_ - step)).c_str());
    log_->progress(buf, step);
    if (m.contains("eval_accuracy"))
      log_->line(s_.name + " step " + std::to_string(step) + ": eval_accuracy " + std::to_string(m["eval_accuracy"].get<double>()) +
                 ", eval_loss " + std::to_string(m["eval_loss"].get<double>()));
    ranks_.agree_on_stop();
    if (!checkpoint_or_stop(step, total_steps_, s_.checkpoint.save_every, s_.name + " step ", *log_, [&] { save(); }))
      return false;
  }
  log_->line(s_.name + " done, " + std::to_string(st_.step) + " steps in " + format_duration(seconds_since(t_start)) +
             "; checkpoints, metrics.jsonl and train.log in " + out_);
  return true;
}

}  // namespace

bool run_reward_model_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out_dir, bool resume,
                            dist::Communicator* comm) {
  return RewardModelStage(s, recipe_path, out_dir, resume, comm).run();
}

}  // namespace grpo::trainer

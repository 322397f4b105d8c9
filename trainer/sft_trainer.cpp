#include "trainer/sft_trainer.h"

#include <c10/core/GradMode.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <chrono>
#include <cmath>

#include "dist/communicator.h"
#include "model/checkpoint.h"
#include "trainer/data_parallel.h"
#include "trainer/dataset.h"
#include "trainer/out_of_memory.h"
#include "trainer/device_scalars.h"
#include "trainer/packing.h"
#include "trainer/policy.h"
#include "trainer/prompt_format.h"
#include "trainer/run_log.h"
#include "trainer/train.h"
#include "trainer/run_state.h"
#include "trainer/step_profile.h"
#include "trainer/zero_shards.h"
#include "util/error.h"
#include "util/files.h"

namespace grpo::trainer {

namespace {

using at::Tensor;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Rows padded into one (B, T) batch: padding is its own segment (-1) with no targets.
struct Batch {
  Tensor ids, segments, positions, targets;
  int64_t targets_count = 0, tokens = 0;
  std::vector<int64_t> mtp_targets_count;  // per MTP depth k: targets k places further on in the same segment
};

Batch make_batch(const std::vector<const PackedRow*>& rows, int64_t mtp_depths) {
  int64_t T = 1;
  for (const auto* r : rows) T = std::max(T, r->length());
  const int64_t B = (int64_t)rows.size();
  std::vector<int64_t> ids(B * T, 0), seg(B * T, -1), pos(B * T, 0), tgt(B * T, -100);
  Batch b;
  for (int64_t i = 0; i < B; ++i)
    for (int64_t t = 0; t < rows[i]->length(); ++t) {
      ids[i * T + t] = rows[i]->ids[t];
      seg[i * T + t] = rows[i]->segments[t];
      pos[i * T + t] = rows[i]->positions[t];
      tgt[i * T + t] = rows[i]->targets[t];
      b.targets_count += rows[i]->targets[t] >= 0;
      ++b.tokens;
    }
  b.mtp_targets_count.assign(mtp_depths, 0);
  for (const PackedRow* r : rows)
    for (int64_t k = 1; k <= mtp_depths; ++k)
      for (int64_t t = 0; t + k < r->length(); ++t)
        b.mtp_targets_count[k - 1] += r->segments[t + k] == r->segments[t] && r->targets[t + k] >= 0;
  auto longs = [&](std::vector<int64_t>& v) {
    return at::from_blob(v.data(), {B, T}, at::TensorOptions().dtype(at::kLong)).clone();
  };
  b.ids = longs(ids);
  b.segments = longs(seg);
  b.positions = longs(pos);
  b.targets = longs(tgt);
  return b;
}

class SftStage {
 public:
  SftStage(const StageSettings& s, const std::string& recipe_path, const std::string& out, bool resume,
           dist::Communicator* comm);
  bool run();

 private:

  std::vector<SftSequence> tokenise(const std::vector<Example>& examples) const;
  double eval_loss();
  struct StepResult {
    double loss = 0, mtp_loss = 0, norm = 0;
  };
  StepResult train_on(const std::vector<Batch>& batches, double targets, const std::vector<double>& mtp_targets,
                      int64_t step);
  void save();
  void resume();

  const StageSettings s_;
  const std::string recipe_path_, out_;
  Policy pol_;
  std::vector<PackedRow> rows_, eval_rows_;
  std::unique_ptr<PromptOrder> order_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t total_steps_ = 0;
  RunState st_;
  CheckpointStore store_;
  std::unique_ptr<RunLog> log_;
  std::string resumed_from_;
  // Several ranks (data parallel): each step's rows split over the ranks in order, the loss
  // normalised by the step's trained tokens over every rank, gradients summed before clipping;
  // rank 0 logs and writes checkpoints.
  StageRanks ranks_;
  std::unique_ptr<ZeroShards> zero_;  // zero_stage 1 and 2: each tensor's AdamW state (and fp32 master) on its owner
  int64_t mtp_depths_ = 0;  // MTP modules trained (mtp_loss_weight > 0)
  StepProfiler profiler_;   // profile_steps
};

SftStage::SftStage(const StageSettings& s, const std::string& recipe_path, const std::string& out, bool resume_run,
                   dist::Communicator* comm)
    : s_(s), recipe_path_(recipe_path), out_(out), store_(out, s.checkpoint.save_total_limit), ranks_(comm) {
  if (ranks_.main() && !resume_run && !list_directory(out_).empty())
    throw Error(out_ + " already holds files of a run: pass --resume to continue it, or choose another --output");
  if (ranks_.main()) make_directories(out_);
  torch::manual_seed(s_.optim.seed);
  pol_ = load_policy(s_, recipe_path_);
  if (s_.model.mtp_loss_weight > 0) mtp_depths_ = pol_.master->config().num_nextn_predict_layers;
  profiler_ = StepProfiler(out_ + "/profile", s_.checkpoint.profile_steps, at::Device(s_.model.device).is_cuda(),
                           ranks_.comm() ? ranks_.comm()->rank() : 0, ranks_.world());

  DataSettings d = s_.data;
  if (d.task == Task::Jsonl) d.answer_field = d.completion_field;  // the completion is what is learnt
  Dataset data = load_dataset(d, recipe_path_);
  PackingResult train = pack_sequences(tokenise(data.train), s_.sft.max_length, s_.sft.packing);
  if (train.rows.empty()) throw Error(recipe_path_ + ": stage '" + s_.name + "': no training example has a completion token to learn");
  rows_ = std::move(train.rows);
  eval_rows_ = pack_sequences(tokenise(data.eval), s_.sft.max_length, s_.sft.packing).rows;
  int64_t tokens = 0;
  for (const auto& r : rows_) tokens += r.length();
  if (ranks_.main())
    fprintf(stderr, "grpo train: %s: %zu examples in %zu rows of at most %lld tokens (%.0f%% filled)%s%s\n", s_.name.c_str(),
          data.train.size(), rows_.size(), (long long)s_.sft.max_length,
          100.0 * tokens / ((double)rows_.size() * s_.sft.max_length),
          train.truncated ? (", " + std::to_string(train.truncated) + " truncated").c_str() : "",
          train.dropped ? (", " + std::to_string(train.dropped) + " with nothing to learn skipped").c_str() : "");
  order_ = std::make_unique<PromptOrder>(rows_.size(), s_.data.shuffle, s_.data.data_seed);
  // per_device_train_batch_size rows per rank and step, so W ranks take W times as many per step.
  const int64_t B = s_.sft.per_device_train_batch_size * ranks_.world(), positions = (int64_t)rows_.size() * s_.sft.num_train_epochs;
  total_steps_ = (positions + B - 1) / B;
  if (s_.optim.max_steps > 0) total_steps_ = std::min(total_steps_, s_.optim.max_steps);

  zero_ = std::make_unique<ZeroShards>(comm, s_.optim.zero_stage, pol_);
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      zero_->optimized(pol_),
      torch::optim::AdamWOptions(s_.optim.learning_rate).weight_decay(s_.optim.weight_decay).betas({0.9, 0.999}));
  if (resume_run) resume();
  std::vector<Tensor> start = pol_.master->parameters();  // every rank starts from rank 0's weights
  for (auto& t : pol_.master->buffers()) start.push_back(t);
  ranks_.broadcast_from_main(start);
  pol_.sync();
  const std::string sharded = zero_->shard_master(pol_);  // every rank holds the same weights now
  log_ = std::make_unique<RunLog>(ranks_.main() ? out_ : "", resumed_from_.empty() ? -1 : st_.step, s_.checkpoint.logging_steps);
  if (!resumed_from_.empty()) log_->line("resumed from " + resumed_from_ + " (step " + std::to_string(st_.step) + ")");
  if (!sharded.empty()) log_->line(s_.name + ": " + sharded);
}

std::vector<SftSequence> SftStage::tokenise(const std::vector<Example>& examples) const {
  std::vector<SftSequence> out;
  PromptFormat format(s_.data, pol_);
  for (const auto& ex : examples) out.push_back(format.sft_sequence(ex));
  if (format.final_turn_only() && ranks_.main())
    fprintf(stderr, "grpo train: %s: the chat template rewrites earlier turns, so each conversation trains its final "
            "reply only\n", s_.name.c_str());
  return out;
}

// Mean negative log-likelihood per trained token of the eval rows (NaN without eval data).
double SftStage::eval_loss() {
  if (eval_rows_.empty()) return std::nan("");
  at::NoGradGuard g;
  double total = 0, n = 0;
  const size_t B = (size_t)s_.sft.per_device_train_batch_size;
  const auto [first, last] = ranks_.share((int64_t)eval_rows_.size());  // each rank its share of the rows
  for (size_t i = first; i < (size_t)last; i += B) {
    std::vector<const PackedRow*> rows;
    for (size_t j = i; j < std::min((size_t)last, i + B); ++j) rows.push_back(&eval_rows_[j]);
    Batch b = make_batch(rows, 0);
    Tensor lp = pol_.compute->packed_target_logprobs(b.ids, b.segments, b.positions, b.targets);
    total -= lp.sum().item<double>();
    n += lp.numel();
  }
  const auto v = ranks_.sum({total, n});
  total = v[0];
  n = v[1];
  return n > 0 ? total / n : std::nan("");
}

void SftStage::save() {
  auto write = [&](const std::string& dir) {
    pol_.save_weights(dir, s_.checkpoint.save_bf16);
    torch::save(*optimizer_, dir + "/optimizer.pt");
    json j = to_json(st_);
    j["recipe"] = recipe_path_;
    j["stage_type"] = "sft";
    j["total_steps"] = total_steps_;
    j["world_size"] = ranks_.world();  // the ranks split each step's rows: resume with as many
    j["zero_stage"] = zero_->stage();
    write_file_atomic(dir + "/trainer_state.json", j.dump(2) + "\n");
  };
  zero_->save(store_, "checkpoint-" + std::to_string(st_.step), pol_, write,
              [&](const std::string& dir) { torch::save(*optimizer_, zero_->optimizer_file(dir)); });
}

void SftStage::resume() {
  const std::string dir = store_.resume_point();
  if (dir.empty()) return;
  resumed_from_ = dir;
  auto saved = model::load_model(dir, {at::kFloat, at::kCPU});
  model::copy_weights(*pol_.master, *saved);
  st_ = read_run_state(dir + "/trainer_state.json");
  ranks_.check_resumable(dir);
  torch::load(*optimizer_, zero_->resume_optimizer_file(dir));
}

// One optimizer step over the step's micro-batches: the loss (the mean over every trained token of
// the step, over all ranks), the MTP loss, and the gradient norm before clipping.
SftStage::StepResult SftStage::train_on(const std::vector<Batch>& batches, double targets,
                                        const std::vector<double>& mtp_targets, int64_t step) {
  double loss = 0, mtp_loss = 0;
  optimizer_->zero_grad();
  // Each micro-batch's loss terms stay on the device until all have run: one host sync a step.
  DeviceScalars terms;  // per micro-batch: the loss, then one term per MTP depth
  const int64_t passes = zero_->passes(pol_, (int64_t)batches.size());  // a rank with fewer runs empty ones
  for (int64_t pass = 0; pass < passes; ++pass) {
    if (pass >= (int64_t)batches.size()) {
      zero_->after_pass(pol_);
      continue;
    }
    const Batch& b = batches[pass];
    auto out = pol_.compute->packed_logprobs(b.ids, b.segments, b.positions, b.targets, mtp_depths_);
    Tensor part = -out.logprobs.sum() / std::max(1.0, targets);
    terms.add(part);
    // DeepSeek-V3's L_MTP = lambda / D * sum_k (mean cross-entropy of depth k), through the whole model.
    for (int64_t k = 0; k < mtp_depths_; ++k) {
      Tensor nll = -out.mtp[k].sum() / (std::max(1.0, mtp_targets[k]) * mtp_depths_);
      terms.add(nll);
      part = part + nll * s_.model.mtp_loss_weight;
    }
    part.backward();
    zero_->after_pass(pol_);
  }
  const std::vector<double> term = terms.read();
  for (size_t i = 0; i < term.size(); i += 1 + mtp_depths_) {
    loss += term[i];
    for (int64_t k = 0; k < mtp_depths_; ++k) mtp_loss += term[i + 1 + k];
  }
  // The whole step's gradients where this rank's optimizer reads them (every rank's summed), clipped.
  const double norm = zero_->reduce_and_clip(pol_, s_.optim.max_grad_norm);
  {
    const auto l = ranks_.sum({loss, mtp_loss});
    loss = l[0];
    mtp_loss = l[1];
  }
  if (!std::isfinite(norm) || !std::isfinite(loss))
    throw Error(s_.name + " step " + std::to_string(step) + ": the loss (" + std::to_string(loss) +
                ") or gradient norm (" + std::to_string(norm) + ") is not finite; stopped before the update");
  optimizer_->step();
  zero_->share_weights(pol_);
  return {loss, mtp_loss, norm};
}

bool SftStage::run() {
  const int64_t B = s_.sft.per_device_train_batch_size * ranks_.world(), total_positions = (int64_t)rows_.size() * s_.sft.num_train_epochs;
  if (st_.step == 0 && resumed_from_.empty()) {
    const double e = eval_loss();
    if (!std::isnan(e)) {
      log_->line(s_.name + ": eval_loss " + std::to_string(e) + " before training");
      log_->metrics({{"step", 0}, {"eval_loss", e}}, 0);
    }
  }
  const auto t_start = Clock::now();
  const int64_t start_step = st_.step;
  while (st_.step < total_steps_) {
    const int64_t step = st_.step + 1;
    const double lr = scheduled_learning_rate(s_.optim, step, total_steps_);
    for (auto& g : optimizer_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    // The step's rows, this rank's share of them: with W ranks, rank r takes the r-th of W equal parts.
    const int64_t p0 = st_.step * B, p1 = std::min(total_positions, step * B);
    const auto [first, last] = ranks_.share(p1 - p0);
    std::vector<const PackedRow*> rows;
    for (int64_t p = p0 + first; p < p0 + last; ++p) rows.push_back(&rows_[order_->at(p)]);
    // Micro-batches of mini_batch_size rows; the loss is the mean over every trained token of the step.
    const int64_t mb = s_.optim.mini_batch_size > 0 ? s_.optim.mini_batch_size : std::max<int64_t>(1, (int64_t)rows.size());
    double targets = 0, tokens = 0;
    std::vector<double> mtp_targets(mtp_depths_, 0.0);
    std::vector<Batch> batches;
    for (size_t i = 0; i < rows.size(); i += mb) {
      batches.push_back(make_batch({rows.begin() + i, rows.begin() + std::min(rows.size(), i + (size_t)mb)}, mtp_depths_));
      targets += batches.back().targets_count;
      tokens += batches.back().tokens;
      for (int64_t k = 0; k < mtp_depths_; ++k) mtp_targets[k] += batches.back().mtp_targets_count[k];
    }
    std::vector<double> counts = {targets, tokens};
    counts.insert(counts.end(), mtp_targets.begin(), mtp_targets.end());
    const auto v = ranks_.sum(counts);  // over every rank's rows
    targets = v[0];
    tokens = v[1];
    for (int64_t k = 0; k < mtp_depths_; ++k) mtp_targets[k] = v[2 + k];
    const auto t0 = Clock::now();
    StepResult r;
    // A GPU out of memory: the error names the keys that bound a micro-batch (trainer/out_of_memory.h).
    with_memory_advice(s_.name + " step " + std::to_string(step), supervised_memory_remedies(s_), [&] {
      profiler_.phase(step, "train", [&] { r = train_on(batches, targets, mtp_targets, step); });
    });
    const auto [loss, mtp_loss, norm] = r;
    const double t_step = seconds_since(t0);
    st_.step = step;
    st_.position = std::min(total_positions, step * B);
    st_.num_tokens += (int64_t)tokens;

    json m = {{"step", step},
              {"loss", loss},
              {"learning_rate", lr},
              {"grad_norm", norm},
              {"epoch", (double)st_.position / rows_.size()},
              {"num_tokens", st_.num_tokens},
              {"tokens_per_second", tokens / std::max(t_step, 1e-9)}};
    if (mtp_depths_ > 0) m["mtp_loss"] = mtp_loss;
    const bool eval_now = s_.eval.eval_every > 0 && (step % s_.eval.eval_every == 0 || step == total_steps_);
    if (eval_now && !eval_rows_.empty()) m["eval_loss"] = eval_loss();
    log_->metrics(m, step);
    const double per_step = seconds_since(t_start) / (step - start_step);
    char buf[200];
    snprintf(buf, sizeof buf, "%s %lld/%lld  loss %.4f  lr %.2e  epoch %.2f  %s elapsed, ETA %s", s_.name.c_str(),
             (long long)step, (long long)total_steps_, loss, lr, m["epoch"].get<double>(),
             format_duration(seconds_since(t_start)).c_str(), format_duration(per_step * (total_steps_ - step)).c_str());
    log_->progress(buf, step);
    if (m.contains("eval_loss")) log_->line(s_.name + " step " + std::to_string(step) + ": eval_loss " + std::to_string(m["eval_loss"].get<double>()));
    if (const std::string md = profiler_.finish(step); !md.empty() && ranks_.main())
      log_->line(s_.name + " step " + std::to_string(step) + " ran under the profiler: " + md);
    ranks_.agree_on_stop();
    if (!checkpoint_or_stop(step, total_steps_, s_.checkpoint.save_every, s_.name + " step ", *log_, [&] { save(); }))
      return false;
  }
  log_->line(s_.name + " done, " + std::to_string(st_.step) + " steps in " + format_duration(seconds_since(t_start)) +
             "; checkpoints, metrics.jsonl and train.log in " + out_);
  return true;
}

}  // namespace

bool run_sft_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out_dir, bool resume,
                   dist::Communicator* comm) {
  return SftStage(s, recipe_path, out_dir, resume, comm).run();
}

}  // namespace grpo::trainer

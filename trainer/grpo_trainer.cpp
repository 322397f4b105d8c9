#include "trainer/grpo_trainer.h"

#include "model/fp8.h"
#include "trainer/grpo_trainer_impl.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <ATen/Context.h>
#include <c10/core/GradMode.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>
#include <utility>

#include "dist/communicator.h"
#include "model/checkpoint.h"
#include "model/flops.h"
#include "rewards/builtin.h"
#include "rewards/rpc.h"
#include "rpc/security.h"
#include "rollout/engine.h"
#include "text/tokenizer.h"
#include "trainer/data_parallel.h"
#include "trainer/dataset.h"
#include "trainer/grpo_loss.h"
#include "trainer/moe_balance.h"
#include "trainer/policy.h"
#include "trainer/prompt_format.h"
#include "trainer/run_log.h"
#include "trainer/run_state.h"
#include "trainer/source_rewards.h"
#include "trainer/step_metrics.h"
#include "trainer/train.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace grpo::trainer {

using at::Tensor;
using json = nlohmann::json;
using Model = model::CausalLM;

std::pair<Tensor, Tensor> pad(const std::vector<Tensor>& rows, int64_t T, at::ScalarType dtype) {
  if (rows.empty()) return {at::zeros({0, T}, dtype), at::zeros({0, T}, dtype)};
  std::vector<Tensor> padded, masks;
  for (const auto& r : rows) {
    int64_t n = r.size(0);
    padded.push_back(at::constant_pad_nd(r.to(dtype), {0, T - n}, 0));
    masks.push_back(at::cat({at::ones({n}, r.options().dtype(dtype)), at::zeros({T - n}, r.options().dtype(dtype))}));
  }
  return {at::stack(padded), at::stack(masks)};
}

namespace {

// The torch generators (CPU, and the device's when on CUDA), saved with each checkpoint.
std::vector<at::Generator> generators(at::Device device) {
  std::vector<at::Generator> g = {at::globalContext().defaultGenerator(at::kCPU)};
  if (device.is_cuda()) g.push_back(at::globalContext().defaultGenerator(device));
  return g;
}

bool empty_or_absent(const std::string& dir) { return list_directory(dir).empty(); }

}  // namespace

GrpoTrainer::GrpoTrainer(const StageSettings& s, const std::string& recipe_path, const std::string& out, bool resume_run,
                         dist::Communicator* comm)
    : s_(s),
      recipe_path_(recipe_path),
      out_(out),
      device_(s.model.device),
      compute_dtype_(s.model.bf16 ? at::kBFloat16 : at::kFloat),
      store_(out, s.checkpoint.save_total_limit),
      comm_(comm) {
  if (comm_) {
    if (s_.rollout.per_step_prompts % comm_->world_size() != 0)
      throw Error(recipe_path_ + ": key 'per_step_prompts': " + std::to_string(s_.rollout.per_step_prompts) +
                  " prompts do not split evenly over " + std::to_string(comm_->world_size()) +
                  " ranks (per_step_prompts is the global batch; each rank rolls out an equal share)");
  }
  if (main_rank() && !resume_run && !empty_or_absent(out_))
    throw Error(out_ + " already holds files of a run: pass --resume to continue it, or choose another --output");
  if (main_rank()) make_directories(out_);
  torch::manual_seed(s_.optim.seed);

  // Model (fp32 master weights, a bf16 compute copy when asked), tokenizer, eos, hub files.
  pol_ = load_policy(s_, recipe_path_);
  config_text_ = pol_.config_text;
  master_ = pol_.master;
  policy_ = pol_.compute;
  tok_ = pol_.tok;
  eos_ = pol_.eos;
  format_ = std::make_unique<PromptFormat>(s_.data, pol_);

  data_ = load_dataset(s_.data, recipe_path_);
  order_ = std::make_unique<PromptOrder>(data_.train.size(), s_.data.shuffle, s_.data.data_seed);

  // Rewards: in process, or through reward workers (asked once now, so that a typo in the spec or
  // a dead worker shows before any training).
  scorer_ = make_stage_scorer(s_.rewards);
  if (!s_.rewards.workers.empty()) {
    try {
      scorer_->score({rewards::RewardItem{"1+1=", "2", "2", json::object()}});
    } catch (const Error& e) {
      throw Error(recipe_path_ + ": keys 'rewards' and 'reward_workers': " + e.what());
    }
  }

  zero_ = std::make_unique<ZeroShards>(comm_, s_.optim.zero_stage, pol_);
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      zero_->optimized(pol_),
      torch::optim::AdamWOptions(s_.optim.learning_rate).weight_decay(s_.optim.weight_decay).betas({0.9, 0.99}));
  sft_optimizer_ = std::make_unique<torch::optim::AdamW>(
      pol_.trainable_parameters(), torch::optim::AdamWOptions(s_.warm_start.sft_learning_rate).weight_decay(0.0));
  sft_rng_.seed(s_.optim.seed + 17);
  if (resume_run) resume();
  if (comm_) {  // every rank starts from rank 0's weights
    c10::NoGradGuard g;
    std::vector<Tensor> ts;
    for (auto& t : master_->parameters()) ts.push_back(t);
    for (auto& t : master_->buffers()) ts.push_back(t);
    comm_->broadcast(ts, 0);
  }
  sync_policy();
  profiler_ = StepProfiler(out_ + "/profile", s_.checkpoint.profile_steps, device_.is_cuda(), comm_ ? comm_->rank() : 0,
                           comm_ ? comm_->world_size() : 1);
  const bool resumed = !resumed_from_.empty();
  log_ = std::make_unique<RunLog>(main_rank() ? out_ : "", resumed ? st_.step : -1, s_.checkpoint.logging_steps);
  if (resumed)
    log_->line("resumed from " + resumed_from_ +
               (st_.warm_start_done ? " (step " + std::to_string(st_.step) + ")"
                                    : " (warm start step " + std::to_string(st_.warm_start_step) + ")"));

  rollout::EngineOptions eo;
  eo.max_batch = s_.rollout.max_batch > 0
                     ? s_.rollout.max_batch
                     : std::max<int64_t>(64, s_.rollout.per_step_prompts * s_.rollout.num_generations);
  // The KV cache budget of an engine on `d`: kv_cache_mb, or 4096 MiB on CUDA and 1024 on the CPU (the
  // optimizer's moments are allocated at the first step: leave them room).
  auto cache_bytes = [&](const at::Device& d) {
    return (s_.rollout.kv_cache_mb > 0 ? s_.rollout.kv_cache_mb : d.is_cuda() ? int64_t(4096) : int64_t(1024)) << 20;
  };
  eo.kv_cache_bytes = cache_bytes(device_);
  // What bounds each phase's memory, as a CUDA out-of-memory error names it (trainer/out_of_memory.h).
  rollout_remedies_ = {"lower kv_cache_mb (now " + std::to_string(eo.kv_cache_bytes >> 20) + ")",
                       "lower max_batch (now " + std::to_string(eo.max_batch) + " sequences decoded together)"};
  const auto& o = s_.optim;
  update_remedies_ = {o.max_tokens_per_mini_batch > 0
                          ? "lower max_tokens_per_mini_batch (now " + std::to_string(o.max_tokens_per_mini_batch) + ")"
                          : "lower mini_batch_size (now " +
                                (o.mini_batch_size > 0 ? std::to_string(o.mini_batch_size) : std::string("0: the whole batch")) +
                                ") or set max_tokens_per_mini_batch"};
  if (!s_.model.gradient_checkpointing) update_remedies_.push_back("set gradient_checkpointing: true");
  // exact_rollout: the records stand in for the batch-invariant forward's routing in the update.
  eo.record_routing = s_.moe.routing_replay || (s_.rollout.exact_rollout && !moe_layers(*policy_).empty());
  eo.speculative_mtp = s_.rollout.speculative_mtp;
  eo.num_speculative_tokens = s_.rollout.num_speculative_tokens;
  eo.fp8 = s_.rollout.quantization == RolloutQuantization::Fp8;
  if (s_.moe.routing_replay && moe_layers(*policy_).empty())
    throw Error(recipe_path_ + ": key 'routing_replay': the model has no MoE layer to replay");
  engine_ = std::make_unique<rollout::Engine>(policy_, tok_.get(), eo);
  if (eo.fp8 && main_rank())
    fprintf(stderr, "grpo train: the rollout engine decodes with FP8 copies of %lld layers (%.1f MiB)%s\n",
            (long long)engine_->stats().fp8_layers, engine_->stats().fp8_bytes / 1048576.0,
            model::fp8::native(device_) ? "" : "; no Hopper GPU here: the FP8 products are emulated (slower than bf16)");
  if (s_.rollout.async_rollout >= 0) {
    if (comm_)
      throw Error(recipe_path_ + ": key 'async_rollout': asynchronous rollout runs on one rank for now (the rollout "
                  "thread's collectives would interleave with the update's)");
    const at::Device rd = rollout_device();
    rollout_model_ = pol_.replica(rd);
    rollout::EngineOptions ro = eo;
    ro.kv_cache_bytes = cache_bytes(rd);
    rollout_engine_ = std::make_unique<rollout::Engine>(rollout_model_, tok_.get(), ro);
    if (rd != device_ && main_rank())
      fprintf(stderr, "grpo train: the asynchronous rollout samples on %s, the update trains on %s\n", rd.str().c_str(),
              device_.str().c_str());
  }

  // Prompts that leave no room for a completion are dropped now, named, not met mid-run.
  auto length = [&](const Example& ex) { return (int64_t)format_->prompt_ids(ex).size(); };
  for (auto* part : {&data_.train, &data_.eval}) {
    std::string note = drop_prompts_past_context(*part, engine_->max_context(), length);
    if (!note.empty()) fprintf(stderr, "grpo train: %s: %s\n", part == &data_.train ? "training set" : "eval set", note.c_str());
  }
  if (data_.train.empty()) throw Error(recipe_path_ + ": no training prompt fits the model's context");
  order_ = std::make_unique<PromptOrder>(data_.train.size(), s_.data.shuffle, s_.data.data_seed);
}

at::Device GrpoTrainer::rollout_device() const {
  return s_.rollout.rollout_device.empty() ? device_ : at::Device(s_.rollout.rollout_device);
}

std::shared_ptr<Model> GrpoTrainer::base_model(at::ScalarType dtype) const { return load_base_model(s_, config_text_, dtype); }

std::vector<int64_t> GrpoTrainer::encode(const std::string& s, bool special) const { return pol_.encode(s, special); }

rollout::Request GrpoTrainer::request(const Example& ex, int64_t index) const {
  rollout::Request q;
  q.prompt_index = index;
  q.prompt_ids = format_->prompt_ids(ex);
  q.params.max_new_tokens = s_.rollout.max_completion_length;
  q.params.stop_token_ids = {eos_};
  return q;
}

rewards::RewardItem GrpoTrainer::reward_item(const Example& ex, const rollout::Completion& c) const {
  rewards::RewardItem it{ex.prompt, c.text, ex.answer, ex.metadata};
  it.metadata["completion_tokens"] = c.token_ids.size();
  return it;
}

// ---- mixed precision (trainer/policy.h): bf16 gradients summed into the fp32 master after every
// backward, the master rounded back into the bf16 copy after each optimizer step.
void GrpoTrainer::accumulate_gradients() { pol_.accumulate_gradients(); }

void GrpoTrainer::sync_policy() { pol_.sync(); }

// ---- checkpoints (trainer/run_state.h): the fp32 weights as an HF directory with its tokenizer
// and generation files, optimizer moments, RNG states, the refreshed reference, trainer_state.json.
void GrpoTrainer::save(const std::string& name) {
  // Rank 0 writes the checkpoint while the others wait; with sharded AdamW state (after the warm
  // start) each of them adds its own share before rank 0 publishes it (trainer/zero_shards.h).
  auto write = [&](const std::string& dir) {
    pol_.save_weights(dir, s_.checkpoint.save_bf16);
    torch::save(st_.warm_start_done ? *optimizer_ : *sft_optimizer_, dir + "/optimizer.pt");
    std::vector<Tensor> rng;
    for (auto& g : generators(device_)) {
      std::lock_guard<std::mutex> lock(g.mutex());
      rng.push_back(g.get_state());
    }
    torch::save(rng, dir + "/rng_state.pt");
    // A reference refreshed during the run is part of the state (it is no longer the start policy).
    if (ref_ && s_.optim.ref_model_sync_steps > 0 && st_.step >= s_.optim.ref_model_sync_steps)
      model::save_model(*ref_, config_text_, dir + "/reference", {at::kFloat});
    RunState state = st_;
    if (!st_.warm_start_done) {
      std::ostringstream rng_text;
      rng_text << sft_rng_;
      state.warm_start_rng = rng_text.str();
    }
    json j = to_json(state);
    j["recipe"] = recipe_path_;
    if (comm_) {  // a sharded optimizer state resumes only with the same ranks
      j["world_size"] = comm_->world_size();
      j["zero_stage"] = s_.optim.zero_stage;
    }
    write_file_atomic(dir + "/trainer_state.json", j.dump(2) + "\n");
  };
  zero_->save(
      store_, name, pol_, write,
      [&](const std::string& dir) { torch::save(*optimizer_, zero_->optimizer_file(dir, st_.warm_start_done)); },
      st_.warm_start_done);
}

void GrpoTrainer::resume() {
  const std::string dir = store_.resume_point();
  if (dir.empty()) return;
  resumed_from_ = dir;
  auto saved = model::load_model(dir, {at::kFloat, at::kCPU});  // copied onto the policy's device
  model::copy_weights(*master_, *saved);
  if (file_exists(dir + "/rng_state.pt")) {
    std::vector<Tensor> rng;
    torch::load(rng, dir + "/rng_state.pt");
    auto gens = generators(device_);
    for (size_t i = 0; i < gens.size() && i < rng.size(); ++i) {
      std::lock_guard<std::mutex> lock(gens[i].mutex());
      gens[i].set_state(rng[i]);
    }
  }
  st_ = read_run_state(dir + "/trainer_state.json");
  if (!st_.warm_start_done && !st_.warm_start_rng.empty()) std::istringstream(st_.warm_start_rng) >> sft_rng_;
  // After the warm start the AdamW state may be sharded: it resumes only with the same ranks and zero_stage.
  torch::load(st_.warm_start_done ? *optimizer_ : *sft_optimizer_,
              zero_->resume_optimizer_file(dir, st_.warm_start_done));
}

// ---- the frozen reference (beta > 0): the policy as GRPO starts, or as of the last refresh. Under
// LoRA it is the base, the policy with its adapters off (no second copy), as TRL does with PEFT.
void GrpoTrainer::build_reference() {
  if (s_.loss.beta == 0 || pol_.has_lora()) return;
  const model::LoadOptions lo{compute_dtype_, device_};
  if (st_.step == 0) {
    ref_ = std::make_shared<Model>(policy_->config());
    ref_->to_device_dtype(device_, compute_dtype_);
    model::copy_weights(*ref_, *policy_);
  } else if (!resumed_from_.empty() && is_directory(resumed_from_ + "/reference")) {
    ref_ = model::load_model(resumed_from_ + "/reference", lo);
  } else if (s_.warm_start.sft_steps > 0) {  // the policy as the warm start left it
    if (!is_directory(out_ + "/checkpoint-0"))
      throw Error(out_ + ": cannot rebuild the reference model: checkpoint-0 (the policy after the warm start) is missing");
    ref_ = model::load_model(out_ + "/checkpoint-0", lo);
  } else {
    ref_ = base_model(compute_dtype_);
  }
}

// ---- rewards, retried: a worker that fails is retried by the client; when the whole call fails
// three times, or every item comes back with an error, the run stops rather than train on zeros.
std::vector<rewards::RewardResult> GrpoTrainer::score(const std::vector<rewards::RewardItem>& items,
                                                  const std::string& what) {
  std::vector<rewards::RewardResult> results;
  for (int attempt = 0;; ++attempt) {
    try {
      results = scorer_->score(items);
      break;
    } catch (const Error& e) {
      if (attempt == 2) throw Error(what + ": rewards failed three times: " + e.what());
      log_->line(what + ": rewards failed (" + e.what() + "); retrying");
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

// ---- data parallelism: what the ranks agree on.
// A stop request (SIGTERM, Ctrl-C) seen by any rank stops every rank at the same step.
bool GrpoTrainer::stop_everywhere() {
  if (comm_ && comm_->max(stop_requested() ? 1.0 : 0.0) > 0) request_stop();
  return stop_requested();
}

double GrpoTrainer::learning_rate(int64_t step) const { return scheduled_learning_rate(s_.optim, step, s_.optim.max_steps); }

// ---------------------------------------------------------------------------------------------
// The loop, top to bottom: sample and score, advantages, update, log, evaluate, save.
RolloutBatch GrpoTrainer::next_batch(int64_t step) {
  if (!rollout_engine_) return sample(step, *engine_, st_.position);
  if (!pending_.valid()) launch_rollout(step, st_.position);  // the first step, and the first after a resume
  const auto t0 = Clock::now();
  RolloutBatch b = pending_.get();
  b.time_wait = seconds_since(t0);
  // One-step-off: the next batch is drawn by these weights while this one trains.
  if (s_.rollout.async_rollout == 1 && step < s_.optim.max_steps) launch_rollout(step + 1, b.position_end);
  return b;
}

// Copies the weights as they stand into the rollout model and draws step `step`'s batch from it in
// a second thread (on CUDA, on a stream of its own). The weights have seen st_.step updates.
void GrpoTrainer::launch_rollout(int64_t step, int64_t position) {
  model::copy_weights(*rollout_model_, *policy_);
  const int64_t weights_step = st_.step;
  auto index = [](const at::Device& d) {
    return d.is_cuda() ? (d.index() >= 0 ? d.index() : c10::cuda::current_device()) : -1;
  };
  const int device = index(rollout_device());
  // The copy lands before the thread reads (a copy between GPUs runs on one of the two devices' streams).
  for (int d : {index(device_), device})
    if (d >= 0) c10::cuda::getCurrentCUDAStream(d).synchronize();
  pending_ = std::async(std::launch::async, [this, step, position, weights_step, device] {
    c10::NoGradGuard no_grad;
    std::optional<c10::cuda::CUDAStreamGuard> stream;
    // High priority: the decode step's small kernels get the SMs as the update's large ones free them.
    if (device >= 0) stream.emplace(c10::cuda::getStreamFromPool(true, device));
    RolloutBatch b = sample(step, *rollout_engine_, position);
    if (device >= 0) c10::cuda::getCurrentCUDAStream(device).synchronize();
    b.weights_step = weights_step;
    return b;
  });
}

void GrpoTrainer::run() {
  if (!st_.warm_start_done && s_.warm_start.sft_steps > 0) {
    warm_start();
  } else if (st_.step == 0 && resumed_from_.empty()) {
    st_.warm_start_done = true;
    EvalResult e = main_rank() ? evaluate() : EvalResult{};
    log_->line("base model: " + e.describe());
    json m = {{"step", 0}, {"phase", "base"}};
    e.add_to(m);
    log_->metrics(m, 0);
  }
  build_reference();
  // ZeRO in bf16: from the first GRPO step each rank keeps the fp32 master weights of its own
  // tensors only (the warm start, if any, trained them all on every rank).
  if (const std::string line = zero_->shard_master(pol_); !line.empty()) log_->line(line);

  const auto t_start = Clock::now();
  const int64_t start_step = st_.step, max_steps = s_.optim.max_steps;
  while (st_.step < max_steps) {
    const int64_t step = st_.step + 1;
    const double lr = learning_rate(step);
    for (auto& g : optimizer_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

    if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index() < 0 ? 0 : device_.index());
    const auto t_step = Clock::now();
    RolloutBatch batch;
    const std::string at_step = "step " + std::to_string(step);
    with_memory_advice(at_step + ", rollout", rollout_remedies_, [&] {
      profiler_.phase(step, "rollout", [&] { batch = next_batch(step); });  // rollout, rewards, advantages
    });
    st_.position = batch.position_end;
    auto t0 = Clock::now();
    UpdateStats u;
    with_memory_advice(at_step + ", update", update_remedies_,
                       [&] { profiler_.phase(step, "update", [&] { u = update(batch); }); });
    const double t_train = comm_ ? comm_->max(seconds_since(t0)) : seconds_since(t0);
    if (comm_) {  // the step's figures over all ranks (update() used this rank's own batch)
      reduce_batch(*comm_, batch);
      reduce_update(*comm_, u);
    }
    st_.step = step;
    if (s_.rollout.async_rollout == 0 && step < max_steps) launch_rollout(step + 1, st_.position);
    if (ref_ && s_.optim.ref_model_sync_steps > 0 && step % s_.optim.ref_model_sync_steps == 0)
      model::copy_weights(*ref_, *policy_);

    st_.num_tokens += batch.tokens;
    json m = step_metrics(batch, u, lr, t_train, s_);
    m["step"] = step;
    m["num_tokens"] = st_.num_tokens;
    if (batch.weights_step >= 0) {  // async_rollout: updates the sampling weights lacked, and the wait
      m["async/staleness"] = step - 1 - batch.weights_step;
      m["time_rollout_wait"] = batch.time_wait;
    }
    if (device_.is_cuda()) {  // the step's peak of memory held by tensors, and by PyTorch's caching allocator
      using c10::CachingAllocator::StatType;
      auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index() < 0 ? 0 : device_.index());
      const double allocated = stats.allocated_bytes[static_cast<size_t>(StatType::AGGREGATE)].peak / 1e9;
      const double reserved = stats.reserved_bytes[static_cast<size_t>(StatType::AGGREGATE)].peak / 1e9;
      m["memory/peak_allocated_gb"] = comm_ ? comm_->max(allocated) : allocated;  // the fullest GPU's
      m["memory/peak_reserved_gb"] = comm_ ? comm_->max(reserved) : reserved;
    }
    const bool eval_now = s_.eval.eval_every > 0 && (step % s_.eval.eval_every == 0 || step == max_steps);
    EvalResult e;
    if (eval_now && main_rank()) {
      if (pending_.valid()) pending_.wait();  // the rollout thread's rewards are not shared with evaluation
      e = evaluate();
      e.add_to(m);
    }
    m["time_step"] = seconds_since(t_step);  // wall clock: the batch (or the wait for it), the update, evaluation
    log_->metrics(m, step);
    log_->histogram("rewards", batch.rewards, step);
    if (eval_now) {
      std::string md;
      for (const auto& sample : batch.samples) md += sample + "\n\n";
      log_->text("completions", md, step);
    }
    const double per_step = seconds_since(t_start) / (step - start_step);
    log_->progress(progress_line(m, step, max_steps, per_step, per_step * (max_steps - step)), step);
    if (eval_now) log_->line("step " + std::to_string(step) + " " + e.describe());
    if (const std::string md = profiler_.finish(step); !md.empty() && main_rank())
      log_->line("step " + std::to_string(step) + " ran under the profiler: " + md);
    stop_everywhere();
    if (!checkpoint_or_stop(step, max_steps, s_.checkpoint.save_every, "step ", *log_,
                            [&] { save("checkpoint-" + std::to_string(step)); }))
      throw Stopped{};
  }
  log_->line("done, " + std::to_string(st_.step) + " steps in " + format_duration(seconds_since(t_start)) +
             "; checkpoints, metrics.jsonl and train.log in " + out_);
}

bool run_grpo_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out_dir, bool resume,
                    dist::Communicator* comm) {
  try {
    GrpoTrainer(s, recipe_path, out_dir, resume, comm).run();
  } catch (const Stopped&) {
    return false;
  }
  return true;
}

}  // namespace grpo::trainer

#include "trainer/grpo_trainer.h"

#include <c10/cuda/CUDACachingAllocator.h>

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
#include <random>
#include <sstream>
#include <thread>

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

namespace {
struct Stopped {};  // thrown after the checkpoint of a stop request is saved; run_grpo_stage returns false
}  // namespace

using at::Tensor;
using json = nlohmann::json;
using Model = model::CausalLM;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

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

// The torch generators (CPU, and the device's when on CUDA), saved with each checkpoint.
std::vector<at::Generator> generators(at::Device device) {
  std::vector<at::Generator> g = {at::globalContext().defaultGenerator(at::kCPU)};
  if (device.is_cuda()) g.push_back(at::globalContext().defaultGenerator(device));
  return g;
}

bool empty_or_absent(const std::string& dir) { return list_directory(dir).empty(); }

class Trainer {
 public:
  Trainer(const StageSettings& s, const std::string& recipe_path, const std::string& out, bool resume);
  void run();

 private:
  std::shared_ptr<Model> base_model(at::ScalarType dtype) const;  // the policy before any training
  void resume();
  void save(const std::string& name);
  void build_reference();
  void warm_start();
  EvalResult evaluate();
  RolloutBatch sample(int64_t step);
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
  // ZeRO (zero_stage 1, 2): each trainable parameter has an owner rank, which holds its AdamW
  // moments and updates it; the others receive it by broadcast.
  bool sharded() const { return comm_ && s_.optim.zero_stage > 0; }
  std::vector<Tensor> owned_parameters() const;
  std::string optimizer_file(const std::string& dir) const;
  bool stop_everywhere();

  const StageSettings s_;
  const std::string recipe_path_, out_;
  const at::Device device_;
  const at::ScalarType compute_dtype_;
  Policy pol_;                     // what the members below are taken from
  std::unique_ptr<PromptFormat> format_;
  std::string config_text_;        // the policy's config.json
  std::shared_ptr<Model> master_;  // fp32 weights: what the optimizer updates and checkpoints hold
  std::shared_ptr<Model> policy_;  // what computes: master_ itself in fp32, a bf16 copy with bf16
  std::shared_ptr<Model> ref_;     // frozen reference (beta > 0)
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
  std::unique_ptr<dist::Communicator> comm_;  // null in a single-process run
  std::vector<int> owner_;                     // zero_stage > 0: the owner rank of each trainable parameter
};

Trainer::Trainer(const StageSettings& s, const std::string& recipe_path, const std::string& out, bool resume_run)
    : s_(s),
      recipe_path_(recipe_path),
      out_(out),
      device_(s.model.device),
      compute_dtype_(s.model.bf16 ? at::kBFloat16 : at::kFloat),
      store_(out, s.checkpoint.save_total_limit) {
  if (auto env = dist::read_dist_env()) {
    if (s_.rollout.per_step_prompts % env->world_size != 0)
      throw Error(recipe_path_ + ": key 'per_step_prompts': " + std::to_string(s_.rollout.per_step_prompts) +
                  " prompts do not split evenly over " + std::to_string(env->world_size) +
                  " ranks (per_step_prompts is the global batch; each rank rolls out an equal share)");
    if (s_.advantages.dynamic_sampling)
      throw Error(recipe_path_ + ": key 'dynamic_sampling': not supported with several ranks yet (run it on one rank)");
    comm_ = dist::Communicator::connect(*env, device_);
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

  if (sharded()) owner_ = assign_owners(pol_.trainable_parameters(), comm_->world_size());
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      sharded() ? owned_parameters() : pol_.trainable_parameters(),
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
  const int64_t cache_mb = s_.rollout.kv_cache_mb > 0 ? s_.rollout.kv_cache_mb : device_.is_cuda() ? 4096 : 1024;
  eo.kv_cache_bytes = cache_mb << 20;  // the optimizer's moments are allocated at the first step: leave them room
  engine_ = std::make_unique<rollout::Engine>(policy_, tok_.get(), eo);

  // Prompts that leave no room for a completion are dropped now, named, not met mid-run.
  auto length = [&](const Example& ex) { return (int64_t)format_->prompt_ids(ex).size(); };
  for (auto* part : {&data_.train, &data_.eval}) {
    std::string note = drop_prompts_past_context(*part, engine_->max_context(), length);
    if (!note.empty()) fprintf(stderr, "grpo train: %s: %s\n", part == &data_.train ? "training set" : "eval set", note.c_str());
  }
  if (data_.train.empty()) throw Error(recipe_path_ + ": no training prompt fits the model's context");
  order_ = std::make_unique<PromptOrder>(data_.train.size(), s_.data.shuffle, s_.data.data_seed);
}

std::shared_ptr<Model> Trainer::base_model(at::ScalarType dtype) const { return load_base_model(s_, config_text_, dtype); }

std::vector<int64_t> Trainer::encode(const std::string& s, bool special) const { return pol_.encode(s, special); }

rollout::Request Trainer::request(const Example& ex, int64_t index) const {
  rollout::Request q;
  q.prompt_index = index;
  q.prompt_ids = format_->prompt_ids(ex);
  q.params.max_new_tokens = s_.rollout.max_completion_length;
  q.params.stop_token_ids = {eos_};
  return q;
}

rewards::RewardItem Trainer::reward_item(const Example& ex, const rollout::Completion& c) const {
  rewards::RewardItem it{ex.prompt, c.text, ex.answer, ex.metadata};
  it.metadata["completion_tokens"] = c.token_ids.size();
  return it;
}

// ---- mixed precision (trainer/policy.h): bf16 gradients summed into the fp32 master after every
// backward, the master rounded back into the bf16 copy after each optimizer step.
void Trainer::accumulate_gradients() { pol_.accumulate_gradients(); }

void Trainer::sync_policy() { pol_.sync(); }

// ---- checkpoints (trainer/run_state.h): the fp32 weights as an HF directory with its tokenizer
// and generation files, optimizer moments, RNG states, the refreshed reference, trainer_state.json.
void Trainer::save(const std::string& name) {
  // Rank 0 writes the checkpoint while the others wait; with sharded AdamW state each of them then
  // adds its own share, and rank 0 waits for that.
  const bool shards = sharded() && st_.warm_start_done;
  if (!main_rank()) {
    comm_->barrier();
    if (shards) {
      const std::string dir = out_ + "/" + name, file = optimizer_file(dir);
      torch::save(*optimizer_, file + ".tmp");
      std::filesystem::rename(file + ".tmp", file);
      comm_->barrier();
    }
    return;
  }
  store_.save(name, [&](const std::string& dir) {
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
  });
  if (comm_) comm_->barrier();
  if (shards) comm_->barrier();  // the other ranks' optimizer shards are on disk
}

void Trainer::resume() {
  const std::string dir = store_.latest();
  if (dir.empty()) {
    fprintf(stderr, "grpo train: --resume: no checkpoint in %s yet; starting from the beginning\n", out_.c_str());
    return;
  }
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
  if (sharded() || (comm_ && st_.warm_start_done)) {
    json j = parse_json(read_file(dir + "/trainer_state.json"), dir + "/trainer_state.json");
    const int64_t w = j.value("world_size", int64_t(1)), z = j.value("zero_stage", int64_t(0));
    if (st_.warm_start_done && (z > 0 || sharded()) && (w != comm_->world_size() || z != s_.optim.zero_stage))
      throw Error(dir + ": written by " + std::to_string(w) + " rank(s) with zero_stage " + std::to_string(z) +
                  "; resume it with the same (this job: " + std::to_string(comm_->world_size()) + " ranks, zero_stage " +
                  std::to_string(s_.optim.zero_stage) + ")");
  }
  const std::string file = optimizer_file(dir);
  if (!file_exists(file)) throw Error(dir + ": no " + std::filesystem::path(file).filename().string() + " for this rank");
  torch::load(st_.warm_start_done ? *optimizer_ : *sft_optimizer_, file);
}

// ---- the frozen reference (beta > 0): the policy as GRPO starts, or as of the last refresh. Under
// LoRA it is the base, the policy with its adapters off (no second copy), as TRL does with PEFT.
void Trainer::build_reference() {
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
std::vector<rewards::RewardResult> Trainer::score(const std::vector<rewards::RewardItem>& items,
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

// ---- evaluation on the held-out split: greedy pass@1 and mean reward; with k samples per prompt
// (fixed seed, the recipe's temperature) also their mean reward, mean accuracy and pass@k.
EvalResult Trainer::evaluate() {
  EvalResult e;
  const auto& eval = data_.eval;
  if (eval.empty()) return e;
  std::vector<rollout::Request> reqs;
  for (size_t i = 0; i < eval.size(); ++i) {
    reqs.push_back(request(eval[i], (int64_t)i));
    reqs.back().params.temperature = 0;
  }
  auto run = [&](int64_t n) {
    std::vector<rewards::RewardItem> items;
    for (const auto& c : engine_->generate(reqs)) items.push_back(reward_item(eval[c.prompt_index], c));
    auto results = score(items, "eval");
    double acc = 0, rew = 0, pass = 0;
    int64_t scored = 0, problems = 0;  // samples and problems with a right-or-wrong score
    for (size_t p = 0; p < eval.size(); ++p) {
      double best = 0;
      bool any = false;
      for (int64_t j = 0; j < n; ++j) {
        const auto& res = results[p * n + j];
        rew += res.reward;
        if (auto a = accuracy_of(res)) {
          acc += *a;
          best = std::max(best, *a);
          ++scored;
          any = true;
        }
      }
      pass += best;
      problems += any;
    }
    const double N = (double)results.size();
    return std::array<double, 3>{acc / std::max<int64_t>(1, scored), rew / N, pass / std::max<int64_t>(1, problems)};
  };
  auto greedy = run(1);
  e.accuracy = greedy[0];
  e.reward = greedy[1];
  if (s_.eval.eval_num_generations > 0) {
    for (auto& q : reqs) {
      q.params.n = s_.eval.eval_num_generations;
      q.params.temperature = s_.rollout.temperature;
      q.params.top_p = s_.rollout.top_p;
      q.params.seed = s_.optim.seed * 1000003 + 999999937;  // the same draws at every evaluation
    }
    auto sampled = run(s_.eval.eval_num_generations);
    e.sampled_accuracy = sampled[0];
    e.sampled_reward = sampled[1];
    e.pass_at_k = sampled[2];
  }
  return e;
}

// ---- warm start: supervised steps on prompt -> answer </s>, to make a weak base from scratch.
void Trainer::warm_start() {
  torch::optim::AdamW& sft = *sft_optimizer_;
  const auto t0 = Clock::now();
  const int64_t steps = s_.warm_start.sft_steps, first = st_.warm_start_step;
  for (int64_t s = first; s < steps; ++s) {
    std::vector<std::vector<int64_t>> ps, cs;
    for (int64_t b = 0; b < s_.warm_start.sft_batch_size; ++b) {
      const auto& ex = data_.train[sft_rng_() % data_.train.size()];
      ps.push_back(format_->prompt_ids(ex));
      auto c = encode(ex.answer, false);
      c.push_back(eos_);
      cs.push_back(c);
    }
    sft.zero_grad();
    Tensor loss = -at::cat(policy_->completion_logprobs(ps, cs)).mean();
    loss.backward();
    accumulate_gradients();
    const double norm = torch::nn::utils::clip_grad_norm_(pol_.trainable_parameters(), s_.optim.max_grad_norm);
    const double sft_loss = loss.item<double>();
    if (!std::isfinite(norm) || !std::isfinite(sft_loss))
      throw Error("warm-start step " + std::to_string(s + 1) + ": the loss (" + std::to_string(sft_loss) +
                  ") or gradient norm (" + std::to_string(norm) + ") is not finite; stopped before the update");
    sft.step();
    sync_policy();
    st_.warm_start_step = s + 1;
    if (st_.warm_start_step % 10 == 0 || st_.warm_start_step == steps) {
      const double elapsed = seconds_since(t0), per_step = elapsed / (st_.warm_start_step - first);
      char buf[160];
      snprintf(buf, sizeof buf, "warm start %lld/%lld  loss %.4f  %s elapsed, ETA %s", (long long)st_.warm_start_step,
               (long long)steps, loss.item<double>(), format_duration(elapsed).c_str(),
               format_duration(per_step * (steps - st_.warm_start_step)).c_str());
      log_->progress(buf, st_.warm_start_step);
    }
    // Progress checkpoints of the warm start go to one directory, replaced each time.
    const int64_t every = s_.checkpoint.save_every;
    const bool stopping = stop_everywhere() && st_.warm_start_step < steps;
    if ((every > 0 && st_.warm_start_step % every == 0 && st_.warm_start_step < steps) || stopping) save("warm-start");
    if (stopping) {
      log_->line("stopped after warm start step " + std::to_string(st_.warm_start_step) + "; saved in " + out_ +
                 "/warm-start; continue with --resume");
      throw Stopped{};
    }
  }
  st_.warm_start_done = true;
  EvalResult e = main_rank() ? evaluate() : EvalResult{};
  log_->line("after the warm start (" + std::to_string(steps) + " steps, " + format_duration(seconds_since(t0)) +
             "): " + e.describe());
  json m = {{"step", 0}, {"phase", "warm_start"}};
  e.add_to(m);
  log_->metrics(m, 0);
  save("checkpoint-0");
  if (main_rank()) remove_tree(out_ + "/warm-start");  // superseded by checkpoint-0
}

// ---- rollout: G completions for each of per_step_prompts prompts, scored, with group-normalised
// advantages. Dynamic sampling (DAPO) drops groups whose rewards are all equal (they carry no
// signal) and samples further prompts, up to max_num_gen_batches batches, to refill the step.
RolloutBatch Trainer::sample(int64_t step) {
  RolloutBatch b;
  const int64_t G = s_.rollout.num_generations, n = s_.rollout.per_step_prompts;
  // With several ranks, this rank rolls out prompts [first, first + nl) of the step's n; prompt
  // indices stay global, so the union of every rank's samples is what one rank would draw.
  const int64_t W = comm_ ? comm_->world_size() : 1, nl = n / W, first = comm_ ? comm_->rank() * nl : 0;
  AdvantageConfig ac;
  ac.scale_rewards = s_.advantages.scale_rewards != ScaleRewards::None;
  ac.batch_std = s_.advantages.scale_rewards == ScaleRewards::Batch;  // over each rollout batch
  for (int64_t round = 0; round < s_.advantages.max_num_gen_batches; ++round) {
    std::vector<rollout::Request> reqs;
    std::vector<const Example*> examples;
    for (int64_t i = first; i < first + nl; ++i) {
      examples.push_back(&data_.train[order_->at(st_.position + i)]);
      // prompt_index feeds the random streams: later rounds draw fresh ones.
      rollout::Request q = request(*examples.back(), round * n + i);
      q.params.n = G;
      q.params.temperature = s_.rollout.temperature;
      q.params.top_p = s_.rollout.top_p;
      q.params.seed = s_.optim.seed * 1000003 + step;
      reqs.push_back(q);
    }
    st_.position += n;
    engine_->weight_version = step;
    auto t0 = Clock::now();
    auto comps = engine_->generate(reqs);
    b.time_rollout += seconds_since(t0);
    ++b.gen_batches;

    std::vector<rewards::RewardItem> items;
    for (const auto& c : comps) items.push_back(reward_item(*examples[c.prompt_index - round * n - first], c));
    t0 = Clock::now();
    auto results = score(items, "step " + std::to_string(step));
    b.time_reward += seconds_since(t0);
    std::vector<double> rw(results.size());
    for (size_t i = 0; i < results.size(); ++i) {
      rw[i] = results[i].reward;
      b.add_sample(results[i], comps[i], items[i].prompt, items[i].reference);
    }
    Tensor rewards_t = at::tensor(rw, at::kFloat), adv_local;
    if (comm_) {
      // Every rank's rewards in one (n * G) vector, so that advantages (group- or batch-normalised)
      // are computed over the same numbers as on one rank; this rank then takes its own slice.
      std::vector<Tensor> all{at::zeros({n * G}, at::kDouble)};
      all[0].narrow(0, first * G, nl * G).copy_(at::tensor(rw, at::kDouble));
      comm_->all_reduce_sum(all);
      Tensor global = all[0].to(at::kFloat);
      rewards_t = global.narrow(0, first * G, nl * G).contiguous();
      b.rewards.assign(all[0].data_ptr<double>(), all[0].data_ptr<double>() + n * G);  // for the step's metrics
      Tensor adv_all = group_advantages(global, G, ac);
      adv_local = adv_all.narrow(0, first * G, nl * G).contiguous();
    }
    Tensor adv = comm_ ? adv_local : group_advantages(rewards_t, G, ac);
    Tensor group_std = rewards_t.view({-1, G}).std(1);
    auto adv_a = adv.accessor<float, 1>();
    auto std_a = group_std.accessor<float, 1>();
    for (int64_t g = 0; g < nl; ++g) {
      ++b.groups;
      const bool flat = std_a[g] == 0;
      b.zero_std_groups += flat;
      if ((s_.advantages.dynamic_sampling && flat) || b.kept_groups == nl) continue;
      ++b.kept_groups;
      for (int64_t j = 0; j < G; ++j) {
        const auto& c = comps[g * G + j];
        if (c.prompt_index != round * n + first + g || c.sample_index != j)
          throw Error("rollout returned completions out of order");
        if (c.token_ids.empty()) continue;
        const bool truncated = c.finish_reason == rollout::FinishReason::Length;
        b.prompts.push_back(reqs[g].prompt_ids);
        b.completions.push_back(c.token_ids);
        b.old_logp.push_back(at::tensor(c.logprobs, at::kFloat).to(device_));
        // Truncated completions are masked out entirely when asked (their reward still counts in the group).
        b.advantages.push_back(truncated && s_.advantages.mask_truncated_completions ? 0.0 : adv_a[g * G + j]);
        b.tokens += (int64_t)(c.token_ids.size() + reqs[g].prompt_ids.size());
      }
    }
    if (!s_.advantages.dynamic_sampling || b.kept_groups == nl) break;
  }
  return b;
}

namespace {

// The update's mini-batches [s0, s0 + n): mini_batch_size sequences each, or as many consecutive
// sequences as fit max_tokens_per_mini_batch once padded (n x the longest prompt + completion among
// them; at least one), or the whole batch.
std::vector<std::pair<int64_t, int64_t>> mini_batches(const RolloutBatch& b, const OptimSettings& o) {
  const int64_t Bn = (int64_t)b.prompts.size();
  std::vector<std::pair<int64_t, int64_t>> out;
  if (o.max_tokens_per_mini_batch > 0) {
    int64_t s0 = 0, longest = 0;
    for (int64_t i = 0; i < Bn; ++i) {
      const int64_t len = (int64_t)(b.prompts[i].size() + b.completions[i].size());
      const int64_t n = i - s0 + 1;
      if (n > 1 && n * std::max(longest, len) > o.max_tokens_per_mini_batch) {
        out.emplace_back(s0, i - s0);
        s0 = i;
        longest = 0;
      }
      longest = std::max(longest, len);
    }
    if (s0 < Bn) out.emplace_back(s0, Bn - s0);
    return out;
  }
  const int64_t mb = o.mini_batch_size > 0 ? o.mini_batch_size : std::max<int64_t>(Bn, 1);
  for (int64_t s0 = 0; s0 < Bn; s0 += mb) out.emplace_back(s0, std::min(mb, Bn - s0));
  return out;
}

}  // namespace

// ---- num_iterations optimizer steps on one rollout batch, each over mini-batches whose losses
// are weighted to add up to the whole batch's loss (tokens for dapo, sequences for grpo and dr_grpo).
UpdateStats Trainer::update(const RolloutBatch& b) {
  UpdateStats u;
  // With several ranks every rank takes part in every collective below, so a step is skipped only
  // when some rank has nothing to train on (all of its completions empty), and then on every rank.
  const bool nothing = comm_ ? comm_->max(b.prompts.empty() ? 1.0 : 0.0) > 0 : b.prompts.empty();
  if (nothing) return u;
  const LossConfig& lc = s_.loss;
  int64_t max_len = 1;
  for (const auto& c : b.completions) max_len = std::max<int64_t>(max_len, c.size());
  auto [old_t, mask] = pad(b.old_logp, max_len, at::kFloat);
  Tensor adv_t = at::tensor(b.advantages, at::kDouble).to(at::kFloat).to(device_);
  const int64_t Bn = (int64_t)b.prompts.size();
  const auto chunks = mini_batches(b, s_.optim);
  // Sequences [s0, s0 + n) of the batch: (prompts, completions).
  auto mini_batch = [&](int64_t s0, int64_t n) {
    using Rows = std::vector<std::vector<int64_t>>;
    return std::make_pair(Rows(b.prompts.begin() + s0, b.prompts.begin() + s0 + n),
                          Rows(b.completions.begin() + s0, b.completions.begin() + s0 + n));
  };
  // Log-probs of the whole batch under `m`, without a graph, in the training mini-batches.
  auto batch_logprobs = [&](Model& m) {
    c10::NoGradGuard g;
    std::vector<Tensor> rows;
    for (auto [s0, n] : chunks) {
      const auto [ps, cs] = mini_batch(s0, n);
      for (auto& t : m.completion_logprobs(ps, cs)) rows.push_back(t);
    }
    return pad(rows, max_len, at::kFloat).first;
  };
  Tensor ref_t;
  if (ref_) {
    ref_t = batch_logprobs(*ref_);
  } else if (s_.loss.beta > 0 && pol_.has_lora()) {
    model::AdaptersDisabled base(*policy_);
    ref_t = batch_logprobs(*policy_);
  }
  Tensor rollout_t = old_t;  // the engine's log-probs, for the rollout_logprob_diff metric
  // The training forward in the same mini-batches as below, so that the first update's ratio is 1.
  if (s_.rollout.recompute_old_logprobs) old_t = batch_logprobs(*policy_);
  double forward = 0;  // model FLOPs of one forward over the batch
  for (int64_t i = 0; i < Bn; ++i) {
    const int64_t C = (int64_t)b.completions[i].size();
    forward += model::forward_flops(policy_->config(), (int64_t)b.prompts[i].size() + C - 1, C);
  }
  u.model_flops = forward * ((ref_t.defined() ? 1 : 0) + (s_.rollout.recompute_old_logprobs ? 1 : 0) +
                             3 * s_.optim.num_iterations);
  const size_t moe_count = moe_layers(*policy_).size();
  const bool want_routing = moe_count > 0;
  // Loss normalisers over the global batch: tokens (dapo) and sequences (grpo) of every rank.
  double total_tokens = mask.sum().item<double>(), total_sequences = (double)Bn;
  if (comm_) {
    auto t = comm_->sum({total_tokens, total_sequences});
    total_tokens = t[0];
    total_sequences = t[1];
  }
  for (int64_t it = 0; it < s_.optim.num_iterations; ++it) {
    optimizer_->zero_grad();
    u.loss = u.clip_fraction = u.clip_low = u.clip_high = u.kl = u.aux_loss = u.entropy = 0;  // the last iteration's
    std::vector<Tensor> loads(moe_count);
    for (auto [s0, n] : chunks) {
      const auto [ps, cs] = mini_batch(s0, n);
      auto out = policy_->completion_forward(ps, cs, {/*entropy=*/true, /*routing=*/want_routing});
      Tensor logp = pad(out.logprobs, max_len, at::kFloat).first;
      Tensor cmask = mask.narrow(0, s0, n);
      auto lo = grpo_loss({logp, old_t.narrow(0, s0, n), ref_t.defined() ? ref_t.narrow(0, s0, n) : Tensor(), cmask,
                           adv_t.narrow(0, s0, n)},
                          lc);
      const double tw = cmask.sum().item<double>() / std::max(1.0, total_tokens);  // this chunk's share of tokens
      const double w = lc.type == LossType::Dapo ? tw : (double)n / total_sequences;
      Tensor loss = lo.loss * w;
      u.loss += lo.loss.item<double>() * w;
      u.clip_fraction += lo.clip_fraction * tw;
      u.clip_low += lo.clip_low_fraction * tw;
      u.clip_high += lo.clip_high_fraction * tw;
      u.kl += lo.kl * tw;
      u.entropy += (pad(out.entropy, max_len, at::kFloat).first * cmask).sum().item<double>() / std::max(1.0, total_tokens);
      if (it == 0) {
        c10::NoGradGuard g;
        u.rollout_logprob_diff +=
            ((logp - rollout_t.narrow(0, s0, n)).abs() * cmask).sum().item<double>() / std::max(1.0, total_tokens);
      }
      if (want_routing) {
        if (out.routing.size() != moe_count) throw Error("MoE routing of an unexpected size in the training forward");
        Tensor aux;
        for (size_t l = 0; l < moe_count; ++l) {
          const auto& r = out.routing[l];
          if (it == 0) {  // the balancing bias moves once per step, from the load over real tokens
            Tensor load = expert_load(r.experts, out.token_mask, r.scores.size(1));
            loads[l] = loads[l].defined() ? loads[l] + load : load;
          }
          if (s_.moe.aux_loss_alpha > 0) {
            Tensor a = sequence_aux_loss(r.scores, r.experts, out.token_mask, s_.moe.aux_loss_alpha);
            aux = aux.defined() ? aux + a : a;
          }
        }
        if (aux.defined()) {
          loss = loss + aux * ((double)n / total_sequences);
          u.aux_loss += aux.item<double>() * n / total_sequences;
        }
      }
      loss.backward();
      accumulate_gradients();
    }
    if (comm_ && s_.optim.zero_stage == 2) {
      // each owner holds its parameters' global gradient
      u.grad_norm = reduce_gradients_to_owners(*comm_, pol_.trainable_parameters(), owner_, s_.optim.max_grad_norm);
    } else {
      if (comm_) all_reduce_gradients(*comm_, pol_.trainable_parameters());  // the global batch's gradient everywhere
      u.grad_norm = torch::nn::utils::clip_grad_norm_(pol_.trainable_parameters(), s_.optim.max_grad_norm);
    }
    if (!std::isfinite(u.grad_norm) || !std::isfinite(u.loss))
      throw Error("step " + std::to_string(st_.step + 1) + ": the " + (std::isfinite(u.loss) ? "gradient norm" : "loss") +
                  " is not finite (loss " + std::to_string(u.loss) + ", gradient norm " + std::to_string(u.grad_norm) +
                  "); stopped before the update, so the weights and checkpoints so far are intact (lower learning_rate, "
                  "or resume from the last checkpoint)");
    optimizer_->step();
    if (sharded()) {
      broadcast_from_owners(*comm_, pol_.trainable_parameters(), owner_);
      // The optimizer zeroes only its own parameters' gradients: the others' must not carry over.
      auto params = pol_.trainable_parameters();
      for (size_t i = 0; i < params.size(); ++i)
        if (owner_[i] != comm_->rank()) params[i].mutable_grad() = Tensor();
    }
    // Under LoRA the whole base is frozen, the balancing bias included (checkpoints hold the adapters alone).
    if (it == 0 && want_routing && comm_) comm_->all_reduce_sum(loads);  // expert loads over every rank's tokens
    if (it == 0 && want_routing)
      u.expert_spread = update_routing_bias(*master_, loads, pol_.has_lora() ? 0.0 : s_.moe.bias_update_speed);
    sync_policy();
  }
  return u;
}

// ---- data parallelism: what the ranks agree on.
// A stop request (SIGTERM, Ctrl-C) seen by any rank stops every rank at the same step.
bool Trainer::stop_everywhere() {
  if (comm_ && comm_->max(stop_requested() ? 1.0 : 0.0) > 0) request_stop();
  return stop_requested();
}

std::vector<Tensor> Trainer::owned_parameters() const {
  auto params = pol_.trainable_parameters();
  std::vector<Tensor> out;
  for (size_t i = 0; i < params.size(); ++i)
    if (owner_[i] == comm_->rank()) out.push_back(params[i]);
  return out;
}

// Where this rank's optimizer state lives in a checkpoint: optimizer.pt, or with sharded AdamW
// state after the warm start, rank r's own optimizer-rank<r>.pt (rank 0's is optimizer.pt).
std::string Trainer::optimizer_file(const std::string& dir) const {
  if (!sharded() || !st_.warm_start_done || comm_->rank() == 0) return dir + "/optimizer.pt";
  return dir + "/optimizer-rank" + std::to_string(comm_->rank()) + ".pt";
}

double Trainer::learning_rate(int64_t step) const { return scheduled_learning_rate(s_.optim, step, s_.optim.max_steps); }

// ---------------------------------------------------------------------------------------------
// The loop, top to bottom: sample and score, advantages, update, log, evaluate, save.
void Trainer::run() {
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

  const auto t_start = Clock::now();
  const int64_t start_step = st_.step, max_steps = s_.optim.max_steps;
  while (st_.step < max_steps) {
    const int64_t step = st_.step + 1;
    const double lr = learning_rate(step);
    for (auto& g : optimizer_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

    if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index() < 0 ? 0 : device_.index());
    RolloutBatch batch = sample(step);  // rollout, rewards, advantages
    auto t0 = Clock::now();
    UpdateStats u = update(batch);
    const double t_train = comm_ ? comm_->max(seconds_since(t0)) : seconds_since(t0);
    if (comm_) {  // the step's figures over all ranks (update() used this rank's own batch)
      reduce_batch(*comm_, batch);
      reduce_update(*comm_, u);
    }
    st_.step = step;
    if (ref_ && s_.optim.ref_model_sync_steps > 0 && step % s_.optim.ref_model_sync_steps == 0)
      model::copy_weights(*ref_, *policy_);

    st_.num_tokens += batch.tokens;
    json m = step_metrics(batch, u, lr, t_train, s_);
    m["step"] = step;
    m["num_tokens"] = st_.num_tokens;
    if (device_.is_cuda()) {  // the step's peak of memory held by tensors, and by PyTorch's caching allocator
      using c10::CachingAllocator::StatType;
      auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index() < 0 ? 0 : device_.index());
      m["memory/peak_allocated_gb"] = stats.allocated_bytes[static_cast<size_t>(StatType::AGGREGATE)].peak / 1e9;
      m["memory/peak_reserved_gb"] = stats.reserved_bytes[static_cast<size_t>(StatType::AGGREGATE)].peak / 1e9;
    }
    const bool eval_now = s_.eval.eval_every > 0 && (step % s_.eval.eval_every == 0 || step == max_steps);
    EvalResult e;
    if (eval_now && main_rank()) {
      e = evaluate();
      e.add_to(m);
    }
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
    stop_everywhere();
    if (!checkpoint_or_stop(step, max_steps, s_.checkpoint.save_every, "step ", *log_,
                            [&] { save("checkpoint-" + std::to_string(step)); }))
      throw Stopped{};
  }
  log_->line("done, " + std::to_string(st_.step) + " steps in " + format_duration(seconds_since(t_start)) +
             "; checkpoints, metrics.jsonl and train.log in " + out_);
}

}  // namespace

bool run_grpo_stage(const StageSettings& s, const std::string& recipe_path, const std::string& out_dir, bool resume) {
  StageSettings stage = s;
  if (auto env = dist::read_dist_env(); env && stage.model.device == "cuda")
    stage.model.device = "cuda:" + std::to_string(env->local_rank);  // one GPU per local rank
  try {
    Trainer(stage, recipe_path, out_dir, resume).run();
  } catch (const Stopped&) {
    return false;
  }
  return true;
}

}  // namespace grpo::trainer

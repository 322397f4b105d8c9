#include "rollout/service.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "model/lora.h"
#include "model/torch_error.h"
#include "text/tokenizer.h"
#include "util/error.h"
#include "util/files.h"

namespace grpo::rollout {

namespace {

// One Generate call: its completions queue here until the caller's thread hands them on.
struct Call {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Completion> done;
  std::unordered_map<uint64_t, std::vector<int64_t>> prompt_ids;  // by engine request id
  int64_t remaining = 0;
  std::string error;
  std::atomic<bool> abandoned{false};
};

}  // namespace

std::shared_ptr<const text::Tokenizer> load_tokenizer_if_present(const std::string& model_dir) {
  std::string path = model_dir + "/tokenizer.json";
  if (!file_exists(path)) return nullptr;
  return std::make_shared<const text::Tokenizer>(text::Tokenizer::load(path));
}

// ---------------------------------------------------------------------------------------------
struct EngineBackend::Impl {
  std::shared_ptr<model::CausalLM> model;
  std::shared_ptr<const text::Tokenizer> tokenizer;
  EngineOptions options;
  std::string model_dir;
  std::unique_ptr<Engine> engine;

  std::mutex mu;
  std::condition_variable cv;       // wakes the worker
  std::condition_variable updated;  // wakes update_weights callers
  std::deque<std::pair<Request, std::shared_ptr<Call>>> inbox;
  struct Owned {
    std::shared_ptr<Call> call;
    int64_t left;  // samples not yet finished
  };
  std::unordered_map<uint64_t, Owned> owner;  // engine request id -> its call
  bool stop = false;
  int update_pending = 0;
  std::mutex update_mu;             // one update at a time
  std::function<void()> update_job;
  std::string update_error;
  bool update_done = false;
  std::atomic<int64_t> running{0}, waiting{0};
  EngineStats stats;
  std::thread worker;

  void fail_all(const std::string& msg) {
    for (auto& kv : owner) {
      std::lock_guard<std::mutex> g(kv.second.call->mu);
      kv.second.call->error = msg;
      kv.second.call->cv.notify_all();
    }
    owner.clear();
  }

  // Sequences of calls whose caller went away stop here, and their blocks go back.
  void drop_abandoned() {
    for (auto it = owner.begin(); it != owner.end();) {
      if (it->second.call->abandoned) {
        engine->cancel(it->first);
        it = owner.erase(it);
      } else {
        ++it;
      }
    }
  }

  void loop() {
    std::unique_lock<std::mutex> lk(mu);
    while (true) {
      cv.wait(lk, [&] { return stop || !inbox.empty() || !engine->idle() || update_pending; });
      if (stop) break;
      drop_abandoned();
      // While an update waits, new prompts wait too, so that running sequences drain.
      if (!update_pending) {
        while (!inbox.empty()) {
          auto [req, call] = std::move(inbox.front());
          inbox.pop_front();
          if (call->abandoned) continue;
          std::vector<int64_t> ids = req.prompt_ids;
          const int64_t n = req.params.n;
          uint64_t id = engine->add(std::move(req), "prompt");
          {
            std::lock_guard<std::mutex> g(call->mu);
            call->prompt_ids[id] = std::move(ids);
          }
          owner[id] = {call, n};
        }
      }
      if (update_pending && engine->idle()) {
        std::string err;
        try {
          update_job();
        } catch (const c10::Error& e) {
          err = torch_message(e);
        } catch (const std::exception& e) {
          err = e.what();
        }
        update_error = err;
        update_done = true;
        update_pending = 0;
        updated.notify_all();
        continue;
      }
      if (engine->idle()) continue;
      lk.unlock();
      std::vector<Completion> done;
      std::string err;
      try {
        done = engine->step();
      } catch (const c10::Error& e) {
        err = torch_message(e);
      } catch (const std::exception& e) {
        err = e.what();
      }
      lk.lock();
      if (!err.empty()) {
        // The engine's state is unknown after a failure: fail every call and start afresh.
        fail_all("generation failed: " + err);
        int64_t version = engine->weight_version;
        engine = std::make_unique<Engine>(model, tokenizer.get(), options);
        engine->weight_version = version;
        continue;
      }
      for (auto& c : done) {
        auto it = owner.find(c.request_id);
        if (it == owner.end()) continue;
        auto call = it->second.call;
        if (--it->second.left == 0) owner.erase(it);
        if (call->abandoned) continue;
        std::lock_guard<std::mutex> g(call->mu);
        call->done.push_back(std::move(c));
        call->cv.notify_all();
      }
      running = engine->running();
      waiting = engine->waiting() + (int64_t)inbox.size();
      stats = engine->stats();
    }
  }
};

EngineBackend::EngineBackend(std::shared_ptr<model::CausalLM> model,
                             std::shared_ptr<const text::Tokenizer> tokenizer, EngineOptions options,
                             std::string model_dir)
    : impl_(std::make_unique<Impl>()) {
  impl_->model = std::move(model);
  impl_->tokenizer = std::move(tokenizer);
  impl_->options = options;
  impl_->model_dir = std::move(model_dir);
  impl_->engine = std::make_unique<Engine>(impl_->model, impl_->tokenizer.get(), options);
  impl_->stats = impl_->engine->stats();
  impl_->worker = std::thread([this] { impl_->loop(); });
}

EngineBackend::~EngineBackend() {
  {
    std::lock_guard<std::mutex> g(impl_->mu);
    impl_->stop = true;
    impl_->fail_all("the rollout backend is shutting down");
  }
  impl_->cv.notify_all();
  impl_->worker.join();
}

void EngineBackend::generate(const std::vector<PromptInput>& prompts, const SamplingParams& params, bool ignore_eos,
                             const CompletionSink& emit, const std::function<bool()>& cancelled) {
  SamplingParams p = params;
  const auto& cfg = impl_->model->config();
  if (!ignore_eos && cfg.eos_token_id &&
      std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), *cfg.eos_token_id) == p.stop_token_ids.end())
    p.stop_token_ids.push_back(*cfg.eos_token_id);
  // Build and check every request before any work starts.
  std::vector<Request> reqs;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& in = prompts[i];
    std::string where = "prompt " + std::to_string(in.prompt_index);
    Request r;
    r.prompt_index = in.prompt_index;
    r.params = p;
    if (in.is_text) {
      if (!impl_->tokenizer) throw Error(where + ": a text prompt needs a tokenizer (the model directory has no tokenizer.json); send token ids");
      for (int32_t t : impl_->tokenizer->encode(in.text)) r.prompt_ids.push_back(t);
    } else {
      r.prompt_ids = in.ids;
    }
    impl_->engine->check(r, where);
    reqs.push_back(std::move(r));
  }
  auto call = std::make_shared<Call>();
  call->remaining = (int64_t)reqs.size() * p.n;
  if (call->remaining == 0) return;
  {
    std::lock_guard<std::mutex> g(impl_->mu);
    for (auto& r : reqs) impl_->inbox.emplace_back(std::move(r), call);
  }
  impl_->cv.notify_all();
  auto abandon = [&] {
    call->abandoned = true;  // the worker frees its sequences; later completions are dropped
    impl_->cv.notify_all();
  };
  std::unique_lock<std::mutex> lk(call->mu);
  while (call->remaining > 0) {
    // Wakes now and then to see whether the caller is still there.
    call->cv.wait_for(lk, std::chrono::milliseconds(100), [&] { return !call->done.empty() || !call->error.empty(); });
    if (!call->error.empty()) throw Error(call->error);
    if (cancelled && cancelled()) {
      abandon();
      return;
    }
    while (!call->done.empty()) {
      Completion c = std::move(call->done.front());
      call->done.pop_front();
      call->remaining -= 1;
      std::vector<int64_t> ids = call->prompt_ids[c.request_id];
      lk.unlock();
      bool go_on = emit(c, ids);
      lk.lock();
      if (!go_on) {
        abandon();
        return;
      }
    }
  }
}

double EngineBackend::update_weights(const std::string& dir, int64_t version) {
  auto t0 = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> one(impl_->update_mu);
  // Read the checkpoint on the CPU first (outside the engine's lock): a bad one fails here.
  std::shared_ptr<model::CausalLM> fresh;
  try {
    fresh = model::load_model(dir, {at::kFloat, at::kCPU});
    // A LoRA adapter for a server that holds a plain model: the adapter folded into its base.
    if (model::has_lora(*fresh) && !model::has_lora(*impl_->model)) fresh = model::merged_copy(*fresh);
  } catch (const c10::Error& e) {
    throw Error(torch_message(e));
  }
  std::unique_lock<std::mutex> lk(impl_->mu);
  impl_->update_done = false;
  impl_->update_job = [this, fresh, version, dir] {
    try {
      model::copy_weights(*impl_->model, *fresh);
    } catch (const Error& e) {
      throw Error("update weights from " + dir + ": " + e.what());
    }
    impl_->engine->weight_version = version;
  };
  impl_->update_pending = 1;
  impl_->cv.notify_all();
  impl_->updated.wait(lk, [&] { return impl_->update_done; });
  impl_->update_job = nullptr;
  if (!impl_->update_error.empty()) throw Error(impl_->update_error);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

ServerInfo EngineBackend::info() {
  ServerInfo i;
  const auto& c = impl_->model->config();
  i.model_dir = impl_->model_dir;
  i.model_type = c.model_type;
  i.vocab_size = c.vocab_size;
  i.max_context = impl_->engine->max_context();
  i.has_tokenizer = impl_->tokenizer != nullptr;
  {
    std::lock_guard<std::mutex> g(impl_->mu);
    i.weight_version = impl_->engine->weight_version;
    i.kv_cache_blocks = impl_->stats.num_blocks;
  }
  i.device = impl_->model->device().str();
  i.dtype = c10::toString(impl_->model->dtype());
  i.max_batch = impl_->options.max_batch;
  i.block_size = impl_->options.block_size;
  i.running = impl_->running;
  i.waiting = impl_->waiting;
  i.eos_token_id = c.eos_token_id ? *c.eos_token_id : -1;
  return i;
}

EngineStats EngineBackend::stats() {
  std::lock_guard<std::mutex> g(impl_->mu);
  return impl_->stats;
}

}  // namespace grpo::rollout

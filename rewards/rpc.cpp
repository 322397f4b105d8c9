#include "rewards/rpc.h"

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

#include "grpo.grpc.pb.h"
#include "rewards/builtin.h"
#include "rewards/score_calls.h"
#include "rpc/credentials.h"
#include "rpc/health.h"
#include "util/error.h"
#include "util/json.h"
#include "util/strings.h"

namespace grpo::rewards {

namespace pb = grpo::v1;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
LocalScorer::LocalScorer(std::shared_ptr<const Reward> reward, int threads) : reward_(std::move(reward)), threads_(threads) {}

std::vector<RewardResult> LocalScorer::score(const std::vector<RewardItem>& items) {
  return score_all(*reward_, items, threads_);
}

namespace {

void to_proto(const RewardItem& it, pb::RewardItem* p) {
  p->set_prompt(it.prompt);
  p->set_completion(it.completion);
  p->set_reference(it.reference);
  p->set_metadata_json(it.metadata.dump());
}

RewardResult from_proto(const pb::RewardResult& p) {
  RewardResult r;
  r.reward = p.reward();
  for (const auto& kv : p.components()) r.components[kv.first] = kv.second;
  r.error = p.error();
  return r;
}

// A fixed set of threads with a bounded queue.
class Pool {
 public:
  Pool(int threads, size_t max_queue) : max_queue_(max_queue) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  bool try_submit(std::function<void()> job) {
    {
      std::lock_guard<std::mutex> g(mu_);
      if (stop_ || jobs_.size() >= max_queue_) return false;
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
    return true;
  }

 private:
  void run() {
    while (true) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t max_queue_;
  bool stop_ = false;
};

class RewardServiceImpl final : public pb::RewardService::CallbackService {
 public:
  RewardServiceImpl(const RewardRegistry& registry, const WorkerOptions& o)
      : options_(o),
        calls_(registry, o.default_spec, o.reward_options),
        fast_(o.threads, o.max_queue),
        slow_(o.threads, o.max_queue) {}

  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const pb::ScoreRequest* req,
                                  pb::ScoreReply* reply) override {
    auto* reactor = ctx->DefaultReactor();
    if (!rpc::authorized(*ctx, options_.security.token)) {
      reactor->Finish(rpc::unauthenticated());
      return reactor;
    }
    Pool& pool = calls_.slow(req->spec()) ? slow_ : fast_;  // code never holds up math
    bool queued = pool.try_submit([this, ctx, req, reply, reactor] {
      if (ctx->IsCancelled()) {
        reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
        return;
      }
      grpc::Status status = calls_.score(*req, reply);
      if (status.ok()) reply->set_worker(options_.host + ":" + std::to_string(port));
      reactor->Finish(status);
    });
    if (!queued) reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "reward worker queue is full"));
    return reactor;
  }

  grpc::ServerUnaryReactor* Info(grpc::CallbackServerContext* ctx, const pb::RewardInfoRequest*,
                                 pb::RewardInfoReply* reply) override {
    if (!rpc::authorized(*ctx, options_.security.token)) {
      auto* reactor = ctx->DefaultReactor();
      reactor->Finish(rpc::unauthenticated());
      return reactor;
    }
    for (const auto& name : calls_.served()) reply->add_rewards(name);
    reply->set_default_spec(options_.default_spec);
    reply->set_threads(options_.threads);
    auto* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  int port = 0;

 private:
  WorkerOptions options_;
  ScoreCalls calls_;
  Pool fast_, slow_;  // calls without and with a slow reward (Reward::slow), each `threads` threads
};

}  // namespace

// ---------------------------------------------------------------------------------------------
struct RewardWorker::Impl {
  std::unique_ptr<RewardServiceImpl> service;
  std::unique_ptr<grpc::Service> health;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

RewardWorker::RewardWorker(const RewardRegistry& registry, WorkerOptions o) : impl_(std::make_unique<Impl>()) {
  auto credentials = rpc::server_credentials(o.security, o.host, "reward worker");
  impl_->service = std::make_unique<RewardServiceImpl>(registry, o);
  impl_->health = rpc::make_health_service({"grpo.v1.RewardService"});
  grpc::ServerBuilder b;
  std::string address = rpc::join_host_port(o.host, o.port);
  b.AddListeningPort(address, credentials, &impl_->port);
  b.RegisterService(impl_->service.get());
  b.RegisterService(impl_->health.get());
  b.SetMaxReceiveMessageSize(256 << 20);
  b.SetMaxSendMessageSize(256 << 20);
  impl_->server = b.BuildAndStart();
  if (!impl_->server || impl_->port == 0) throw Error("reward worker: cannot listen on " + address);
  impl_->service->port = impl_->port;
}

RewardWorker::~RewardWorker() { shutdown(); }
int RewardWorker::port() const { return impl_->port; }
void RewardWorker::wait() { impl_->server->Wait(); }
void RewardWorker::shutdown() {
  if (impl_->server) impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

// ---------------------------------------------------------------------------------------------
struct RewardClient::Impl {
  std::vector<std::string> addresses;
  std::vector<std::unique_ptr<pb::RewardService::Stub>> stubs;
  ClientOptions o;
  std::atomic<int64_t> retries{0};
};

RewardClient::RewardClient(std::vector<std::string> addresses, ClientOptions options) : impl_(std::make_unique<Impl>()) {
  if (addresses.empty()) throw Error("reward client: no worker addresses");
  impl_->addresses = std::move(addresses);
  impl_->o = options;
  if (impl_->o.shard_size == 0) impl_->o.shard_size = 64;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  for (const auto& a : impl_->addresses)
    impl_->stubs.push_back(pb::RewardService::NewStub(grpc::CreateCustomChannel(a, rpc::channel_credentials(options.security), args)));
}
RewardClient::~RewardClient() = default;
int64_t RewardClient::retries() const { return impl_->retries; }

std::vector<RewardResult> RewardClient::score(const std::vector<RewardItem>& items) {
  const auto& o = impl_->o;
  const size_t n = items.size(), S = o.shard_size, shards = (n + S - 1) / S, W = impl_->addresses.size();
  std::vector<RewardResult> out(n);
  std::vector<std::string> failures;  // of the first shard that failed everywhere
  std::mutex mu;
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  auto run_shard = [&](size_t s) {
    const size_t begin = s * S, end = std::min(n, begin + S);
    pb::ScoreRequest req;
    req.set_spec(o.spec);
    for (size_t i = begin; i < end; ++i) to_proto(items[i], req.add_items());
    std::vector<std::string> errors;
    const int attempts = std::max<int>(o.max_attempts, (int)W);
    for (int a = 0; a < attempts; ++a) {
      const size_t w = (s + a) % W;
      grpc::ClientContext ctx;
      rpc::set_deadline(ctx, o.timeout_seconds);
      rpc::attach_token(ctx, o.security.token);
      pb::ScoreReply reply;
      grpc::Status st = impl_->stubs[w]->Score(&ctx, req, &reply);
      if (st.ok() && reply.results_size() == (int)(end - begin)) {
        for (size_t i = begin; i < end; ++i) out[i] = from_proto(reply.results((int)(i - begin)));
        return;
      }
      if (st.ok())
        errors.push_back(impl_->addresses[w] + ": answered " + std::to_string(reply.results_size()) + " results for " +
                         std::to_string(end - begin) + " items");
      else if (st.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
               st.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
               st.error_code() == grpc::StatusCode::UNAUTHENTICATED)  // no other worker will say otherwise
        throw Error("reward worker " + impl_->addresses[w] + " refused the request: " + st.error_message());
      else
        errors.push_back(rpc::describe(st, "Score", impl_->addresses[w]));
      ++impl_->retries;
      if (o.on_retry && a + 1 < attempts)
        o.on_retry(errors.back() + "; retrying on " + impl_->addresses[(s + a + 1) % W]);
    }
    std::lock_guard<std::mutex> g(mu);
    if (!failed.exchange(true)) {
      failures = errors;
      failures.insert(failures.begin(), "items [" + std::to_string(begin) + ", " + std::to_string(end) + ")");
    }
  };
  std::exception_ptr error;
  auto worker = [&] {
    try {
      for (size_t s; !failed && (s = next++) < shards;) run_shard(s);
    } catch (...) {
      std::lock_guard<std::mutex> g(mu);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };
  const int threads = std::max<int>(1, std::min<int>((int)shards, o.max_in_flight > 0 ? o.max_in_flight : (int)(2 * W)));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  if (failed) {
    std::string msg = "no reward worker answered for " + failures[0] + "; tried:";
    for (size_t i = 1; i < failures.size(); ++i) msg += (i > 1 ? "; " : " ") + failures[i];
    throw Error(msg);
  }
  return out;
}

}  // namespace grpo::rewards

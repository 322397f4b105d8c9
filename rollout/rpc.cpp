#include "rollout/rpc.h"

#include <grpcpp/grpcpp.h>

#include "grpo.grpc.pb.h"
#include "rpc/credentials.h"
#include "rpc/health.h"
#include "util/error.h"

namespace grpo::rollout {

namespace pb = grpo::v1;

namespace {

SamplingParams from_proto(const pb::SamplingSettings& s) {
  SamplingParams p;
  p.n = s.n() == 0 ? 1 : s.n();
  p.temperature = s.temperature();
  p.top_p = s.top_p() == 0 ? 1.0 : s.top_p();
  p.top_k = s.top_k();
  p.max_new_tokens = s.max_new_tokens() == 0 ? 256 : s.max_new_tokens();
  p.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  p.stop_strings.assign(s.stop_strings().begin(), s.stop_strings().end());
  p.seed = s.seed();
  return p;
}

void to_proto(const SamplingParams& p, bool ignore_eos, pb::SamplingSettings* s) {
  s->set_n(p.n);
  s->set_temperature(p.temperature);
  s->set_top_p(p.top_p);
  s->set_top_k(p.top_k);
  s->set_max_new_tokens(p.max_new_tokens);
  for (auto t : p.stop_token_ids) s->add_stop_token_ids(t);
  for (const auto& t : p.stop_strings) s->add_stop_strings(t);
  s->set_seed(p.seed);
  s->set_ignore_eos(ignore_eos);
}

void to_proto(const ServerInfo& i, pb::InfoReply* r) {
  r->set_model_dir(i.model_dir);
  r->set_model_type(i.model_type);
  r->set_vocab_size(i.vocab_size);
  r->set_max_context(i.max_context);
  r->set_has_tokenizer(i.has_tokenizer);
  r->set_weight_version(i.weight_version);
  r->set_device(i.device);
  r->set_dtype(i.dtype);
  r->set_max_batch(i.max_batch);
  r->set_kv_cache_blocks(i.kv_cache_blocks);
  r->set_block_size(i.block_size);
  r->set_running(i.running);
  r->set_waiting(i.waiting);
  r->set_eos_token_id(i.eos_token_id);
}

ServerInfo from_proto(const pb::InfoReply& r) {
  ServerInfo i;
  i.model_dir = r.model_dir();
  i.model_type = r.model_type();
  i.vocab_size = r.vocab_size();
  i.max_context = r.max_context();
  i.has_tokenizer = r.has_tokenizer();
  i.weight_version = r.weight_version();
  i.device = r.device();
  i.dtype = r.dtype();
  i.max_batch = r.max_batch();
  i.kv_cache_blocks = r.kv_cache_blocks();
  i.block_size = r.block_size();
  i.running = r.running();
  i.waiting = r.waiting();
  i.eos_token_id = r.eos_token_id();
  return i;
}

// The first limit `req` goes past, as a message naming it; "" when within all.
std::string over_limit(const pb::GenerateRequest& req, const ServerLimits& L) {
  const auto& s = req.sampling();
  const int64_t n = s.n() == 0 ? 1 : s.n(), prompts = req.prompts_size();
  auto says = [](const std::string& what, int64_t got, const char* flag, int64_t limit) {
    return what + " = " + std::to_string(got) + " is more than this server allows (" + flag + " " +
           std::to_string(limit) + ")";
  };
  if (n > L.max_samples) return says("n", n, "--max-samples", L.max_samples);
  if (prompts > L.max_prompts) return says("prompts per call", prompts, "--max-prompts", L.max_prompts);
  if (n * prompts > L.max_total_samples)  // both bounded above: no overflow
    return says("samples per call", n * prompts, "--max-total-samples", L.max_total_samples);
  if (L.max_new_tokens > 0 && s.max_new_tokens() > L.max_new_tokens)
    return says("max_new_tokens", s.max_new_tokens(), "--max-new-tokens", L.max_new_tokens);
  for (const auto& p : req.prompts())
    if ((int64_t)p.text().size() > L.max_prompt_bytes)
      return "prompt " + std::to_string(p.prompt_index()) + ": " +
             says("text bytes", (int64_t)p.text().size(), "--max-prompt-bytes", L.max_prompt_bytes);
  return "";
}

class RolloutServiceImpl final : public pb::RolloutService::Service {
 public:
  RolloutServiceImpl(Backend& b, RolloutServerOptions o) : backend_(b), options_(std::move(o)) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                        grpc::ServerWriter<pb::CompletionResult>* writer) override {
    if (!rpc::authorized(*ctx, options_.security.token)) return rpc::unauthenticated();
    if (std::string over = over_limit(*req, options_.limits); !over.empty())
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, over);
    std::vector<PromptInput> prompts;
    for (const auto& p : req->prompts()) {
      PromptInput in;
      in.prompt_index = p.prompt_index();
      if (p.input_case() == pb::Prompt::kText) {
        in.is_text = true;
        in.text = p.text();
      } else {
        in.ids.assign(p.token_ids().ids().begin(), p.token_ids().ids().end());
      }
      prompts.push_back(std::move(in));
    }
    try {
      backend_.generate(prompts, from_proto(req->sampling()), req->sampling().ignore_eos(),
                        [&](const Completion& c, const std::vector<int64_t>& prompt_ids) {
                          if (ctx->IsCancelled()) return false;
                          pb::CompletionResult r;
                          r.set_prompt_index(c.prompt_index);
                          r.set_sample_index(c.sample_index);
                          for (auto t : c.token_ids) r.add_token_ids(t);
                          for (auto l : c.logprobs) r.add_logprobs(l);
                          r.set_text(c.text);
                          r.set_finish_reason(to_string(c.finish_reason));
                          r.set_weight_version(c.weight_version);
                          for (auto t : prompt_ids) r.add_prompt_ids(t);
                          return writer->Write(r);
                        },
                        [ctx] { return ctx->IsCancelled(); });
    } catch (const Error& e) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, e.what());
    }
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled the call");
    return grpc::Status::OK;
  }

  grpc::Status UpdateWeights(grpc::ServerContext* ctx, const pb::UpdateWeightsRequest* req,
                             pb::UpdateWeightsReply* reply) override {
    if (!rpc::authorized(*ctx, options_.security.token)) return rpc::unauthenticated();
    try {
      reply->set_seconds(backend_.update_weights(req->checkpoint_dir(), req->version()));
      reply->set_version(req->version());
    } catch (const Error& e) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, e.what());
    }
    return grpc::Status::OK;
  }

  grpc::Status Info(grpc::ServerContext* ctx, const pb::InfoRequest*, pb::InfoReply* reply) override {
    if (!rpc::authorized(*ctx, options_.security.token)) return rpc::unauthenticated();
    try {
      to_proto(backend_.info(), reply);
    } catch (const std::exception& e) {
      return grpc::Status(grpc::StatusCode::INTERNAL, e.what());
    }
    return grpc::Status::OK;
  }

 private:
  Backend& backend_;
  RolloutServerOptions options_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
struct RolloutServer::Impl {
  std::unique_ptr<RolloutServiceImpl> service;
  std::unique_ptr<grpc::Service> health;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

RolloutServer::RolloutServer(Backend& backend, const std::string& host, int port, RolloutServerOptions options)
    : impl_(std::make_unique<Impl>()) {
  auto credentials = rpc::server_credentials(options.security, host, "rollout server");
  impl_->service = std::make_unique<RolloutServiceImpl>(backend, std::move(options));
  impl_->health = rpc::make_health_service({"grpo.v1.RolloutService"});
  grpc::ServerBuilder builder;
  std::string address = rpc::join_host_port(host, port);
  builder.AddListeningPort(address, credentials, &impl_->port);
  builder.RegisterService(impl_->service.get());
  builder.RegisterService(impl_->health.get());
  builder.SetMaxReceiveMessageSize(256 << 20);
  builder.SetMaxSendMessageSize(256 << 20);
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || impl_->port == 0) throw Error("rollout server: cannot listen on " + address);
}

RolloutServer::~RolloutServer() { shutdown(); }
int RolloutServer::port() const { return impl_->port; }
void RolloutServer::wait() { impl_->server->Wait(); }
void RolloutServer::shutdown() {
  if (impl_->server) impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

// ---------------------------------------------------------------------------------------------
struct RolloutClient::Impl {
  std::string address;
  double generate_timeout, call_timeout;
  std::string token;
  std::unique_ptr<pb::RolloutService::Stub> stub;
};

RolloutClient::RolloutClient(const std::string& address, double generate_timeout, double call_timeout,
                             rpc::Security security)
    : impl_(std::make_unique<Impl>()) {
  impl_->address = address;
  impl_->token = security.token;
  impl_->generate_timeout = generate_timeout;
  impl_->call_timeout = call_timeout;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  args.SetMaxSendMessageSize(256 << 20);
  impl_->stub = pb::RolloutService::NewStub(grpc::CreateCustomChannel(address, rpc::channel_credentials(security), args));
}
RolloutClient::~RolloutClient() = default;
const std::string& RolloutClient::address() const { return impl_->address; }

void RolloutClient::generate(const std::vector<PromptInput>& prompts, const SamplingParams& params, bool ignore_eos,
                             const CompletionSink& emit, const std::function<bool()>& cancelled) {
  pb::GenerateRequest req;
  for (const auto& p : prompts) {
    auto* q = req.add_prompts();
    q->set_prompt_index(p.prompt_index);
    if (p.is_text) {
      q->set_text(p.text);
    } else {
      auto* ids = q->mutable_token_ids();
      for (auto t : p.ids) ids->add_ids(t);
    }
  }
  to_proto(params, ignore_eos, req.mutable_sampling());
  grpc::ClientContext ctx;
  rpc::set_deadline(ctx, impl_->generate_timeout);
  rpc::attach_token(ctx, impl_->token);
  auto reader = impl_->stub->Generate(&ctx, req);
  pb::CompletionResult r;
  bool stopped = false;
  while (reader->Read(&r)) {
    Completion c;
    c.prompt_index = r.prompt_index();
    c.sample_index = r.sample_index();
    c.token_ids.assign(r.token_ids().begin(), r.token_ids().end());
    c.logprobs.assign(r.logprobs().begin(), r.logprobs().end());
    c.text = r.text();
    c.finish_reason = r.finish_reason() == "stop" ? FinishReason::Stop : FinishReason::Length;
    c.weight_version = r.weight_version();
    std::vector<int64_t> prompt_ids(r.prompt_ids().begin(), r.prompt_ids().end());
    if (!emit(c, prompt_ids) || (cancelled && cancelled())) {
      ctx.TryCancel();
      stopped = true;
      break;
    }
  }
  grpc::Status s = reader->Finish();
  if (stopped) return;
  if (!s.ok()) {
    // The server's own message ("prompt 3: empty prompt") is the useful part of an invalid request.
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) throw Error(s.error_message());
    throw Error(rpc::describe(s, "Generate", impl_->address));
  }
}

double RolloutClient::update_weights(const std::string& dir, int64_t version) {
  pb::UpdateWeightsRequest req;
  req.set_checkpoint_dir(dir);
  req.set_version(version);
  pb::UpdateWeightsReply reply;
  grpc::ClientContext ctx;
  rpc::set_deadline(ctx, std::max(impl_->call_timeout, 600.0));  // waits for running sequences, then loads
  rpc::attach_token(ctx, impl_->token);
  grpc::Status s = impl_->stub->UpdateWeights(&ctx, req, &reply);
  if (!s.ok()) {
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) throw Error(s.error_message());
    throw Error(rpc::describe(s, "UpdateWeights", impl_->address));
  }
  return reply.seconds();
}

ServerInfo RolloutClient::info() {
  pb::InfoReply reply;
  grpc::ClientContext ctx;
  rpc::set_deadline(ctx, impl_->call_timeout);
  rpc::attach_token(ctx, impl_->token);
  grpc::Status s = impl_->stub->Info(&ctx, pb::InfoRequest(), &reply);
  if (!s.ok()) throw Error(rpc::describe(s, "Info", impl_->address));
  return from_proto(reply);
}

}  // namespace grpo::rollout

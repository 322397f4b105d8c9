#include "rollout/rpc.h"

#include <grpcpp/grpcpp.h>

#include "grpo.grpc.pb.h"
#include "rollout/messages.h"
#include "rpc/credentials.h"
#include "rpc/health.h"
#include "util/error.h"

namespace grpo::rollout {

namespace pb = grpo::v1;

namespace {

class RolloutServiceImpl final : public pb::RolloutService::Service {
 public:
  RolloutServiceImpl(Backend& b, RolloutServerOptions o) : backend_(b), options_(std::move(o)) {}

  grpc::Status Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                        grpc::ServerWriter<pb::CompletionResult>* writer) override {
    if (!rpc::authorized(*ctx, options_.security.token)) return rpc::unauthenticated();
    if (std::string over = over_limit(*req, options_.limits); !over.empty())
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, over);
    std::vector<PromptInput> prompts = prompts_from_proto(*req);
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

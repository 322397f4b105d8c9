#include "rpc/health.h"

#include "grpo.grpc.pb.h"
#include "util/error.h"

namespace grpo::rpc {

namespace {

class HealthService final : public grpo::v1::Health::Service {
 public:
  explicit HealthService(std::string name) : name_(std::move(name)) {}
  grpc::Status Check(grpc::ServerContext*, const grpo::v1::HealthRequest*, grpo::v1::HealthReply* reply) override {
    reply->set_serving(true);
    reply->set_server(name_);
    reply->set_version("grpo 0.1.0");
    return grpc::Status::OK;
  }

 private:
  std::string name_;
};

const char* code_name(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    default: return "error";
  }
}

}  // namespace

std::unique_ptr<grpc::Service> make_health_service(const std::string& server_name) {
  return std::make_unique<HealthService>(server_name);
}

std::string join_host_port(const std::string& host, int port) {
  bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string describe(const grpc::Status& s, const std::string& what, const std::string& address) {
  return what + " at " + address + ": " + code_name(s.error_code()) + ": " + s.error_message();
}

std::string check_health(const std::string& address, double timeout_seconds) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpo::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  set_deadline(ctx, timeout_seconds);
  grpo::v1::HealthReply reply;
  grpc::Status s = stub->Check(&ctx, grpo::v1::HealthRequest(), &reply);
  if (!s.ok()) throw Error(describe(s, "health check", address));
  return reply.server();
}

}  // namespace grpo::rpc

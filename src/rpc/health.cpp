#include "rpc/health.h"

#include <algorithm>
#include <thread>

#include "health.grpc.pb.h"
#include "util/error.h"

namespace grpo::rpc {

namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

class HealthService final : public grpc::health::v1::Health::Service {
 public:
  explicit HealthService(std::vector<std::string> services) : services_(std::move(services)) {}

  grpc::Status Check(grpc::ServerContext*, const HealthCheckRequest* request, HealthCheckResponse* reply) override {
    if (!known(request->service())) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service " + request->service());
    reply->set_status(HealthCheckResponse::SERVING);
    return grpc::Status::OK;
  }

  // The status never changes while the server runs: send it once, then hold the stream open until
  // the caller cancels or the server shuts down.
  grpc::Status Watch(grpc::ServerContext* ctx, const HealthCheckRequest* request,
                     grpc::ServerWriter<HealthCheckResponse>* writer) override {
    HealthCheckResponse reply;
    reply.set_status(known(request->service()) ? HealthCheckResponse::SERVING : HealthCheckResponse::SERVICE_UNKNOWN);
    if (!writer->Write(reply)) return grpc::Status::OK;
    while (!ctx->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return grpc::Status::CANCELLED;
  }

 private:
  bool known(const std::string& s) const {
    return s.empty() || std::find(services_.begin(), services_.end(), s) != services_.end();
  }
  std::vector<std::string> services_;
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
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "error";
  }
}

}  // namespace

std::unique_ptr<grpc::Service> make_health_service(const std::vector<std::string>& services) {
  return std::make_unique<HealthService>(services);
}

std::string join_host_port(const std::string& host, int port) {
  bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string describe(const grpc::Status& s, const std::string& what, const std::string& address) {
  return what + " at " + address + ": " + code_name(s.error_code()) + ": " + s.error_message();
}

std::string check_health(const std::string& address, double timeout_seconds, const std::string& service) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  set_deadline(ctx, timeout_seconds);
  HealthCheckRequest request;
  request.set_service(service);
  HealthCheckResponse reply;
  grpc::Status s = stub->Check(&ctx, request, &reply);
  if (!s.ok()) throw Error(describe(s, "health check", address));
  return HealthCheckResponse::ServingStatus_Name(reply.status());
}

}  // namespace grpo::rpc

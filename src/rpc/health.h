// gRPC's standard health service (grpc.health.v1, proto/health.proto) that every grpo server
// offers, and gRPC helpers shared by servers and clients.
// Torch-free (build rule 1): only torch-free targets include this header.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace grpo::rpc {

// grpc.health.v1.Health reporting SERVING for "" (the server) and for each of `services` (full
// names such as "grpo.v1.RewardService"); other names are NOT_FOUND.
std::unique_ptr<grpc::Service> make_health_service(const std::vector<std::string>& services);

// "host:port" for a listening address; IPv6 hosts get brackets.
std::string join_host_port(const std::string& host, int port);

// A client context whose call fails with DEADLINE_EXCEEDED after `seconds`.
inline void set_deadline(grpc::ClientContext& ctx, double seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6)));
}

// One line for a failed call: "<what> at <address>: <code name>: <message>".
std::string describe(const grpc::Status& s, const std::string& what, const std::string& address);

// grpc.health.v1 Check of `service` ("" = the server) at `address` within `timeout_seconds`:
// "SERVING", "NOT_SERVING" or "UNKNOWN"; throws grpo::Error when the call fails.
std::string check_health(const std::string& address, double timeout_seconds, const std::string& service = "");

}  // namespace grpo::rpc

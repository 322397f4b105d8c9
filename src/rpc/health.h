// The Health service every grpo server offers, and gRPC helpers shared by servers and clients.
// Torch-free (build rule 1): only torch-free targets include this header.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

namespace grpo::rpc {

// A Health service that answers `serving` with the given server name ("rollout-server", ...).
std::unique_ptr<grpc::Service> make_health_service(const std::string& server_name);

// "host:port" for a listening address; IPv6 hosts get brackets.
std::string join_host_port(const std::string& host, int port);

// A client context whose call fails with DEADLINE_EXCEEDED after `seconds`.
inline void set_deadline(grpc::ClientContext& ctx, double seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6)));
}

// One line for a failed call: "<what> at <address>: <code name>: <message>".
std::string describe(const grpc::Status& s, const std::string& what, const std::string& address);

// Checks Health.Check at `address` within `timeout_seconds`; returns the server name or throws grpo::Error.
std::string check_health(const std::string& address, double timeout_seconds);

}  // namespace grpo::rpc

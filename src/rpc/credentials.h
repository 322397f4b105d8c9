// gRPC credentials and token checks from rpc/security.h's settings. Torch-free (build rule 1).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "rpc/security.h"

namespace grpo::rpc {

// Server credentials for `host`: TLS when a certificate and key are given. Throws grpo::Error for
// unreadable PEM files, half a TLS pair, or a non-loopback host with neither TLS nor a token
// (unless `insecure`), saying which flags fix it.
std::shared_ptr<grpc::ServerCredentials> server_credentials(const Security& s, const std::string& host,
                                                            const std::string& server_name);
std::shared_ptr<grpc::ChannelCredentials> channel_credentials(const Security& s);

// Server side: whether the call carries the token (always true when no token is configured).
// Compares in constant time.
bool authorized(const grpc::ServerContextBase& ctx, const std::string& token);
// The status a server answers an unauthorized call with.
grpc::Status unauthenticated();

// Client side: attaches the token (nothing when empty).
void attach_token(grpc::ClientContext& ctx, const std::string& token);

}  // namespace grpo::rpc

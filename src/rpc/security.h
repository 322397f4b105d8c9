// Who may call a grpo server: optional TLS (gRPC SSL credentials from PEM files) and an optional
// shared bearer token, for both services (rollout, reward) and their clients. A server refuses to
// listen on a non-loopback address with neither, unless told `insecure`.
// Plain data, free of gRPC headers, so that torch code can hold it; rpc/credentials.h turns it into
// gRPC credentials in the torch-free targets (build rule 1).
#pragma once

#include <string>

namespace grpo::rpc {

struct Security {
  std::string tls_cert, tls_key;  // server: PEM certificate chain and private key -> TLS
  std::string tls_ca;             // client: PEM root certificate(s) to verify the server -> TLS
  std::string token;              // shared secret: clients send "authorization: Bearer <token>"
  bool insecure = false;          // server: allow a non-loopback address without TLS or token
};

// A token from a file (first line, whitespace trimmed) so that it never shows in a process list.
// Throws grpo::Error naming the file when it is unreadable or empty.
std::string read_token_file(const std::string& path);

// Whether `host` is a loopback address (127.0.0.0/8, ::1, localhost).
bool is_loopback(const std::string& host);

}  // namespace grpo::rpc

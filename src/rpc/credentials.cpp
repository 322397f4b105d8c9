#include "rpc/credentials.h"

#include "util/error.h"
#include "util/files.h"

namespace grpo::rpc {

namespace {
std::string read_pem(const std::string& path, const std::string& what) {
  std::string text = read_file(path, int64_t(1) << 20);
  if (text.find("-----BEGIN") == std::string::npos) throw Error(path + ": not a PEM " + what);
  return text;
}
}  // namespace

std::shared_ptr<grpc::ServerCredentials> server_credentials(const Security& s, const std::string& host,
                                                            const std::string& server_name) {
  const bool tls = !s.tls_cert.empty() || !s.tls_key.empty();
  if (tls && (s.tls_cert.empty() || s.tls_key.empty()))
    throw Error(server_name + ": TLS needs both --tls-cert and --tls-key");
  if (!is_loopback(host) && !tls && s.token.empty() && !s.insecure)
    throw Error(server_name + ": refusing to listen on " + host +
                " without TLS (--tls-cert/--tls-key) or a token (--token-file); pass --insecure to do it anyway");
  if (!tls) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions o;
  o.pem_key_cert_pairs.push_back({read_pem(s.tls_key, "private key"), read_pem(s.tls_cert, "certificate")});
  return grpc::SslServerCredentials(o);
}

std::shared_ptr<grpc::ChannelCredentials> channel_credentials(const Security& s) {
  if (s.tls_ca.empty()) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = read_pem(s.tls_ca, "certificate");
  return grpc::SslCredentials(o);
}

bool authorized(const grpc::ServerContextBase& ctx, const std::string& token) {
  if (token.empty()) return true;
  const std::string want = "Bearer " + token;
  auto range = ctx.client_metadata().equal_range("authorization");
  for (auto it = range.first; it != range.second; ++it) {
    const auto& got = it->second;
    if (got.size() != want.size()) continue;
    unsigned char diff = 0;
    for (size_t i = 0; i < want.size(); ++i) diff |= (unsigned char)(got.data()[i] ^ want[i]);
    if (diff == 0) return true;
  }
  return false;
}

grpc::Status unauthenticated() {
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token");
}

void attach_token(grpc::ClientContext& ctx, const std::string& token) {
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
}

}  // namespace grpo::rpc

#include "rpc/security.h"

#include <arpa/inet.h>

#include "util/error.h"
#include "util/files.h"

namespace grpo::rpc {

std::string read_token_file(const std::string& path) {
  std::string text = read_file(path, 4096);
  size_t end = text.find_first_of("\r\n");
  std::string token = text.substr(0, end);
  while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.pop_back();
  while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) token.erase(0, 1);
  if (token.empty()) throw Error(path + ": empty token file");
  return token;
}

bool is_loopback(const std::string& host) {
  if (host == "localhost" || host == "::1" || host == "[::1]") return true;
  in_addr a4{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  return false;
}

}  // namespace grpo::rpc

#include "sandbox/sandbox.h"
#include "util/error.h"

namespace grpo::sandbox {

namespace {
void check_name(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
      name.find('\0') != std::string::npos)
    throw Error("sandbox: file name '" + name + "' must be a plain name");
}
}  // namespace

Workspace::Workspace(int64_t size_mb) : size_mb_(size_mb) {
  if (size_mb < 1) throw Error("sandbox: a workspace needs at least 1 MB (got " + std::to_string(size_mb) + ")");
}

void Workspace::write(const std::string& name, const std::string& content, bool executable) {
  check_name(name);
  files_[name] = File{content, executable ? 0755u : 0644u};
}

std::string Workspace::read(const std::string& name) const {
  auto it = files_.find(name);
  if (it == files_.end()) throw Error("sandbox: the workspace has no file " + name);
  return it->second.content;
}

void Workspace::put(const std::string& name, File f) {
  check_name(name);
  f.mode &= 0777;
  files_[name] = std::move(f);
}

}  // namespace grpo::sandbox

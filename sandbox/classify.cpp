#include "sandbox/classify.h"

#include <signal.h>

#include <cstring>
#include <string>

namespace grpo::sandbox {

const char* stage_name(int s) {
  static const char* names[] = {"",        "uid map sync",   "make / private", "root tmpfs",  "mkdir",
                                "symlink", "read-only bind", "device file",    "device bind", "proc",
                                "tmp",     "work bind",      "work remount",   "pivot_root",  "chdir",
                                "umount old root", "read-only root", "start the program", "workspace tmpfs",
                                "workspace files", "program stdio",  "program chdir", "drop privileges",
                                "no_new_privs",    "seccomp filter", "init's filter", "/dev/null for init", "join the shared namespaces"};
  return s >= 0 && s < (int)(sizeof names / sizeof *names) ? names[s] : "setup";
}

void classify(const InitReport& m, const Supervision& sv, const Limits& L, double cpu_s, Result& res) {
  if (sv.killed_at_deadline) {
    res.status = Status::Timeout;
    return;
  }
  if (sv.killed_at_output_cap) {
    res.status = Status::OutputLimit;
    return;
  }
  res.status = Status::SandboxError;
  if (!sv.report_received) {
    res.error = "the sandbox's init ended without a report";
    return;
  }
  if (m.stage != 0) {
    res.error = std::string("sandbox setup failed at ") + stage_name(m.stage) + ": " + std::strerror(m.err);
    return;
  }
  res.exit_code = m.code;
  res.signal = m.sig;
  res.cpu_ms = m.cpu_ms;
  res.max_rss_kb = m.maxrss_kb;
  if (sv.memory_killed && !(m.exited && m.code == 0)) {  // the run failed, and its cgroup ran out of memory
    res.status = Status::MemoryLimit;
  } else if (m.sig == SIGXCPU || (m.sig == SIGKILL && res.cpu_ms >= cpu_s * 1000 - 50)) {
    res.status = Status::Timeout;
  } else if (m.exited && m.code == 0) {
    res.status = Status::Ok;
  } else if (res.err.find("MemoryError") != std::string::npos || res.err.find("bad_alloc") != std::string::npos ||
             res.err.find("Cannot allocate memory") != std::string::npos ||
             res.max_rss_kb >= (L.memory_mb << 10) * 9 / 10) {
    res.status = Status::MemoryLimit;
  } else {
    res.status = Status::RuntimeError;
  }
}

}  // namespace grpo::sandbox

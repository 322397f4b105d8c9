// Running untrusted programs (model-written code) on a plain Linux host, isolated by the kernel.
//
// Each run: new pid, mount, network, ipc and uts namespaces (plus a user namespace when not root);
// a fresh root of read-only bind mounts (/usr, /bin, /lib*, /etc) with a private /tmp and /dev of
// null, zero, random, urandom; the working directory /work is a size-limited tmpfs; no network at
// all (a new network namespace has only a down loopback); an unprivileged uid when started as
// root; no_new_privs and a seccomp-bpf filter denying what test code never needs (ptrace, mount,
// bpf, kexec, keyctl, io_uring, namespaces, sockets other than AF_UNIX, setrlimit, ...); rlimits on
// CPU time, address space, processes, file size, open files and core dumps; a wall-clock timeout;
// caps on stdout and stderr. The program runs under a small init (pid 1 of its namespace): when
// the program ends or the timeout fires, init ends and the kernel kills every process left in the
// namespace, so nothing outlives a run. Mounts and tmpfs contents vanish with the namespace.
//
// Torch-free. Safe to call from many threads: the child side of fork uses only system calls on
// memory prepared before forking.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace grpo::sandbox {

struct Limits {
  double timeout_s = 10;              // wall clock; the whole process tree is killed
  double cpu_s = 0;                   // RLIMIT_CPU; 0 = timeout_s rounded up
  int64_t memory_mb = 512;            // RLIMIT_AS
  int64_t max_processes = 64;         // RLIMIT_NPROC (for the run's own uid)
  int64_t max_file_mb = 64;           // RLIMIT_FSIZE
  int64_t max_open_files = 256;       // RLIMIT_NOFILE
  size_t max_output_bytes = 1 << 20;  // per stream; beyond: killed, status output_limit
};

enum class Status { Ok, RuntimeError, Timeout, MemoryLimit, OutputLimit, SandboxError };
const char* to_string(Status s);

struct Result {
  Status status = Status::SandboxError;
  int exit_code = -1;  // when the program exited
  int signal = 0;      // when a signal ended it
  std::string out, err;
  double wall_ms = 0, cpu_ms = 0;
  int64_t max_rss_kb = 0;
  std::string error;  // sandbox_error: what failed
};

// What this host supports, probed once.
struct Isolation {
  bool root = false;            // running as root: namespaces without a user namespace, uid drop
  bool namespaces = false;      // pid/mount/net/ipc/uts namespaces can be created
  bool user_namespace = false;  // needed for them when not root
  bool seccomp = false;
  std::string summary() const;  // one line
  bool complete() const { return namespaces && seccomp; }
};
const Isolation& probe();

struct Options {
  // Run even when a mechanism is missing (the run is then only as isolated as the host allows).
  bool allow_weaker_isolation = false;
};

// A working directory that persists across runs (compile, then run the binary per test): a tmpfs
// of `size_mb` when root, a plain temporary directory otherwise. Removed on destruction.
class Workspace {
 public:
  explicit Workspace(int64_t size_mb = 64);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  const std::string& path() const { return path_; }
  void write(const std::string& name, const std::string& content, bool executable = false);
  std::string read(const std::string& name) const;

 private:
  std::string path_;
  bool mounted_ = false;
};

// Runs argv (argv[0] looked up in /usr/local/bin:/usr/bin:/bin) in `ws` mounted at /work, feeding
// `stdin_data`. Throws grpo::Error only when isolation is incomplete and not allowed; every other
// failure is a Result with status sandbox_error.
Result run(const std::vector<std::string>& argv, const std::string& stdin_data, const Limits& limits, Workspace& ws,
           const Options& options = {});

// One-shot: a fresh workspace holding `files` (name -> content).
Result run(const std::vector<std::string>& argv, const std::string& stdin_data,
           const std::map<std::string, std::string>& files, const Limits& limits, const Options& options = {});

// {"status": ..., "exit_code", "signal", "stdout", "stderr", "wall_ms", "cpu_ms", "max_rss_kb"}
std::string to_json(const Result& r);

}  // namespace grpo::sandbox

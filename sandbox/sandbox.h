// Running untrusted programs (model-written code) on a plain Linux host, isolated by the kernel.
//
// Each run: new pid, mount, network, ipc and uts namespaces (plus a user namespace when not root);
// a fresh root of read-only bind mounts (/usr, /bin, /lib*, /etc) with a private /tmp and /dev of
// null, zero, random, urandom; the working directory /work is a tmpfs of the workspace's size
// inside the run's own mount namespace (nothing is mounted on the host, so nothing is left there
// whatever happens to the run or the caller); no network at all (a new network namespace has
// only a down loopback); an unprivileged uid of its own when started as root (one per concurrent
// run, host-wide) or no capabilities in a user namespace otherwise; no_new_privs and an
// allow-list seccomp-bpf filter (sandbox/seccomp_filter.h); rlimits per process and, where a
// cgroup can be made, one memory, process and CPU limit for the whole run (sandbox/cgroup.h); a
// wall-clock timeout that holds whatever the program does with its stdio; caps on stdout and
// stderr. The program runs under a small init (pid 1 of its namespace, sandbox/init.h) that the
// program cannot read or trace: when the program ends or the timeout fires, init ends and the
// kernel kills every process left in the namespace, so nothing outlives a run.
//
// Torch-free. Safe to call from many threads: the child side of clone uses only system calls on
// memory prepared before cloning. SIGPIPE never reaches the caller from a run.
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
  int64_t memory_mb = 512;            // RLIMIT_AS per process, and the run's cgroup memory limit
  int64_t max_processes = 64;         // the run's cgroup pids.max, and RLIMIT_NPROC of its own uid
  double cpus = 1;                    // the run's cgroup CPU share (cpu.max); 0 = no share limit
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
  std::string cgroup;           // what bounds a whole run (sandbox/cgroup.h), in words
  std::string summary() const;  // one line
  bool complete() const { return namespaces && seccomp; }
};
const Isolation& probe();

struct Options {
  // Run even when a mechanism is missing (the run is then only as isolated as the host allows).
  bool allow_weaker_isolation = false;
};

// The files a run starts with and the ones it leaves: held in memory, written into each run's
// /work before the program starts. After a run that ends on its own, the regular files at the top
// of /work that the program created or changed come back (a compiled binary, an output file);
// directories, links, devices and FIFOs never do. `size_mb` bounds /work during a run.
class Workspace {
 public:
  explicit Workspace(int64_t size_mb = 64);
  int64_t size_mb() const { return size_mb_; }
  // `name` must be a plain file name (no '/', not . or ..). Throws grpo::Error.
  void write(const std::string& name, const std::string& content, bool executable = false);
  // Throws grpo::Error naming the file when it is not in the workspace.
  std::string read(const std::string& name) const;
  bool contains(const std::string& name) const { return files_.count(name) > 0; }

  struct File {
    std::string content;
    uint32_t mode = 0644;
  };
  const std::map<std::string, File>& files() const { return files_; }
  void put(const std::string& name, File f);  // a file a run sent back

 private:
  int64_t size_mb_;
  std::map<std::string, File> files_;
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

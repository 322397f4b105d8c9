#include "sandbox/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>

#include "sandbox/cgroup.h"
#include "sandbox/classify.h"
#include "sandbox/fd.h"
#include "sandbox/init.h"
#include "sandbox/seccomp_filter.h"
#include "sandbox/supervise.h"
#include "util/files.h"
#include "util/error.h"

namespace grpo::sandbox {

const char* to_string(Status s) {
  switch (s) {
    case Status::Ok: return "ok";
    case Status::RuntimeError: return "runtime_error";
    case Status::Timeout: return "timeout";
    case Status::MemoryLimit: return "memory_limit";
    case Status::OutputLimit: return "output_limit";
    case Status::SandboxError: return "sandbox_error";
  }
  return "sandbox_error";
}

namespace {

constexpr int kNsFlags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
constexpr uid_t kFirstUid = 61000, kUids = 4000;  // root mode: the programs' uids
constexpr uid_t kUsernsUid = 1000;                // user-namespace mode: the uid inside

// Root mode: a uid no other run on this host holds (RLIMIT_NPROC counts per uid, so runs must
// not share one), held by a lock on a file under /run (or /tmp) for the run's life.
class UidLease {
 public:
  UidLease() {
    static std::atomic<uint32_t> counter{0};
    static const std::string dir = lock_dir();  // made once per process
    if (dir.empty()) return;
    const uint32_t start = ((uint32_t)getpid() * 7919u + counter++) % kUids;
    for (uint32_t i = 0; i < kUids; ++i) {
      uid_t uid = kFirstUid + (start + i) % kUids;
      int fd = open((dir + "/" + std::to_string(uid)).c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
      if (fd < 0) return;
      if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
        fd_ = Fd(fd);
        uid_ = uid;
        return;
      }
      close(fd);
    }
  }
  bool ok() const { return fd_.valid(); }
  uid_t uid() const { return uid_; }

 private:
  // A root-owned directory that is not a link.
  static std::string lock_dir() {
    for (const char* d : {"/run/grpo-sandbox", "/tmp/.grpo-sandbox-uids"}) {
      mkdir(d, 0700);
      struct stat st;
      if (lstat(d, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == 0 && (st.st_mode & 077) == 0) return d;
    }
    return "";
  }
  Fd fd_;
  uid_t uid_ = 0;
};

// The child's plan, built before clone (the child allocates nothing): the new root's mounts, the
// workspace's files, the program, its environment and limits, the seccomp filters. Pipe ends are
// filled in by run(). `av` and `ev` receive argv and the environment (null-terminated).
// Root mode: one empty network namespace (no interface, loopback down) and one IPC namespace that
// every run joins instead of making its own: making a network namespace costs about a millisecond
// and a third of a core in the kernel's cleanup, more than the rest of a short run's isolation.
// Sharing them opens nothing: the filter refuses every socket but AF_UNIX, bind and listen (so no
// run can own an address another could reach), and all System V IPC and message queues.
struct SharedNamespaces {
  int net = -1, ipc = -1;
  static const SharedNamespaces& get() {
    static SharedNamespaces s = [] {
      SharedNamespaces out;
      int go[2];
      if (pipe2(go, O_CLOEXEC) != 0) return out;
      pid_t pid = fork();
      if (pid == 0) {
        char c;
        if (unshare(CLONE_NEWNET | CLONE_NEWIPC) != 0) _exit(1);
        close(go[1]);
        ssize_t unused = read(go[0], &c, 1);  // hold the namespaces until the parent has them
        (void)unused;
        _exit(0);
      }
      close(go[0]);
      if (pid > 0) {
        // The child has unshared when its ns links differ from ours; wait for that briefly.
        std::string base = "/proc/" + std::to_string(pid) + "/ns/";
        for (int i = 0; i < 1000; ++i) {
          char mine[64] = {0}, theirs[64] = {0};
          if (readlink("/proc/self/ns/net", mine, sizeof mine - 1) > 0 &&
              readlink((base + "net").c_str(), theirs, sizeof theirs - 1) > 0 && std::strcmp(mine, theirs) != 0)
            break;
          usleep(1000);
        }
        int net = open((base + "net").c_str(), O_RDONLY | O_CLOEXEC), ipc = open((base + "ipc").c_str(), O_RDONLY | O_CLOEXEC);
        close(go[1]);
        int st;
        waitpid(pid, &st, 0);
        if (net >= 0 && ipc >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) {
          out.net = net;
          out.ipc = ipc;
        } else {
          if (net >= 0) close(net);
          if (ipc >= 0) close(ipc);
        }
      } else {
        close(go[1]);
      }
      return out;
    }();
    return s;
  }
};

// The new root is a tmpfs that init mounts over /tmp inside the run's own mount namespace, so the
// host's tree is never written; without namespaces (weak mode) the program runs in `weak_dir`.
void make_plan(ChildPlan& p, const std::vector<std::string>& argv, const Limits& L, const Workspace& ws,
               const std::string& weak_dir, const Isolation& iso, std::vector<char*>& av, std::vector<char*>& ev,
               double cpu_s) {
  auto keep = [&](std::string s) { p.strings.push_back(std::move(s)); return p.strings.back().c_str(); };
  const std::string root = "/tmp";
  p.mount_isolation = iso.namespaces;
  p.use_seccomp = iso.seccomp;
  p.dev_null = "/dev/null";
  p.root = keep(root);
  p.oldroot = keep(root + "/.old");
  p.work_host = keep(weak_dir);
  p.workdir = keep(root + "/work");
  p.work_tmpfs_options = keep("size=" + std::to_string(ws.size_mb()) + "m,nr_inodes=16384,mode=0700");
  p.max_copy_back = (uint64_t)ws.size_mb() << 20;
  for (const auto& [name, f] : ws.files())
    p.files.push_back({keep((p.mount_isolation ? root + "/work/" : weak_dir + "/") + name), f.content.data(),
                       f.content.size(), (mode_t)f.mode});
  for (const char* d : {"/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc"}) {
    struct stat st;
    if (lstat(d, &st) != 0) continue;
    if (S_ISLNK(st.st_mode)) {
      char target[256];
      ssize_t n = readlink(d, target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      p.links.push_back({keep(target), keep(root + d)});
    } else if (S_ISDIR(st.st_mode)) {
      p.mkdirs.push_back(keep(root + d));
      p.binds.push_back({keep(d), keep(root + d)});
    }
  }
  for (const char* d : {"/.old", "/dev", "/proc", "/tmp", "/work"}) p.mkdirs.push_back(keep(root + d));
  for (const char* d : {"/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"}) p.devs.push_back({keep(d), keep(root + d)});
  p.proc = keep(root + "/proc");
  p.tmp = keep(root + "/tmp");
  for (const auto& a : argv) av.push_back(const_cast<char*>(keep(a)));
  av.push_back(nullptr);
  for (const char* e : {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/work", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1",
                        "PYTHONHASHSEED=0", "TMPDIR=/tmp"})
    ev.push_back(const_cast<char*>(e));
  ev.push_back(nullptr);
  static const char* const kPath[] = {"/usr/local/bin", "/usr/bin", "/bin", nullptr};
  p.argv = av.data();
  p.envp = ev.data();
  p.path_dirs = kPath;
  p.cpu = {(rlim_t)cpu_s, (rlim_t)cpu_s + 1};
  p.as = {(rlim_t)L.memory_mb << 20, (rlim_t)L.memory_mb << 20};
  p.nproc = {(rlim_t)L.max_processes, (rlim_t)L.max_processes};
  p.fsize = {(rlim_t)L.max_file_mb << 20, (rlim_t)L.max_file_mb << 20};
  p.nofile = {(rlim_t)L.max_open_files, (rlim_t)L.max_open_files};
  p.drop_uid = iso.root;
  if (!iso.root && iso.user_namespace) p.uid = p.gid = kUsernsUid;
  if (iso.root && iso.namespaces) {
    p.shared_net = SharedNamespaces::get().net;
    p.shared_ipc = SharedNamespaces::get().ipc;
  }
  const BpfProgram& prog = program_filter();
  p.program_filter.len = (unsigned short)prog.code.size();
  p.program_filter.filter = const_cast<sock_filter*>(prog.code.data());
  const BpfProgram& init = init_filter();
  p.init_filter.len = init.error.empty() ? (unsigned short)init.code.size() : 0;
  p.init_filter.filter = const_cast<sock_filter*>(init.code.data());
}

// What init sent back: FileRecord, name, bytes; ... ; an empty record.
bool take_files(const std::string& bytes, Workspace& ws) {
  size_t off = 0;
  while (off + sizeof(FileRecord) <= bytes.size()) {
    FileRecord r;
    std::memcpy(&r, bytes.data() + off, sizeof r);
    off += sizeof r;
    if (r.name_len == 0) return true;
    if (r.name_len > bytes.size() - off || r.size > bytes.size() - off - r.name_len) return false;
    std::string name = bytes.substr(off, r.name_len);
    off += r.name_len;
    ws.put(name, {bytes.substr(off, r.size), r.mode});
    off += r.size;
  }
  return false;
}

// The child's stack, unmapped when the run is over.
struct Stack {
  static constexpr size_t kSize = 256 << 10;
  void* base = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  ~Stack() {
    if (base != MAP_FAILED) munmap(base, kSize);
  }
  char* top() const { return static_cast<char*>(base) + kSize; }
};

// Weak mode: the program's working directory on the host, removed with everything in it.
struct RunDir {
  std::string path;
  void make() {
    char tmpl[] = "/tmp/grpo-sandbox-XXXXXX";
    if (mkdtemp(tmpl)) path = tmpl;
  }
  ~RunDir() {
    if (path.empty()) return;
    try {
      remove_tree(path);
    } catch (...) {
    }
  }
};

// clone3 with fork's semantics (no CLONE_VM: the child goes on with a copy of this stack), the child
// started inside the cgroup v2 directory `cgroup_fd`, so that no migration is needed.
pid_t clone_into_cgroup(int flags, int cgroup_fd, ChildPlan* plan) {
  struct CloneArgs {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
  } args{};
  constexpr uint64_t kCloneIntoCgroup = 0x200000000ULL;
  args.flags = (uint64_t)(flags & ~0xff) | kCloneIntoCgroup;
  args.exit_signal = SIGCHLD;
  args.cgroup = (uint64_t)cgroup_fd;
  long r = syscall(SYS_clone3, &args, sizeof args);
  if (r == 0) _exit(child_init(plan));
  return (pid_t)r;
}

bool write_proc(pid_t pid, const char* file, const std::string& text) {
  std::string path = "/proc/" + std::to_string(pid) + "/" + file;
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == (ssize_t)text.size();
  close(fd);
  return ok;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
std::string Isolation::summary() const {
  std::string s = "sandbox isolation: ";
  s += root ? "root (uid drop)" : "unprivileged";
  s += namespaces ? (user_namespace ? ", namespaces via a user namespace" : ", namespaces") : ", NO namespaces";
  s += seccomp ? ", seccomp allow-list" : ", NO seccomp";
  s += "; " + cgroup;
  return s;
}

const Isolation& probe() {
  static Isolation iso = [] {
    Isolation i;
    i.root = geteuid() == 0;
    i.seccomp = prctl(PR_GET_SECCOMP) >= 0 && program_filter().error.empty();
    for (int attempt = 0; attempt < 2 && !i.namespaces; ++attempt) {
      int flags = kNsFlags | (attempt == 1 ? CLONE_NEWUSER : 0);
      if (attempt == 0 && !i.root) continue;
      pid_t pid = fork();
      if (pid == 0) _exit(unshare(flags) == 0 ? 0 : 1);
      int st = 0;
      waitpid(pid, &st, 0);
      if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        i.namespaces = true;
        i.user_namespace = attempt == 1;
      }
    }
    i.cgroup = cgroup_support().summary();
    return i;
  }();
  return iso;
}

// ---------------------------------------------------------------------------------------------
Result run(const std::vector<std::string>& argv, const std::string& stdin_data, const Limits& L, Workspace& ws,
           const Options& opt) {
  const Isolation& iso = probe();
  if (!iso.complete() && !opt.allow_weaker_isolation)
    throw Error(iso.summary() + ": refusing to run untrusted code (pass --allow-weaker-isolation to run anyway)");
  Result res;
  if (argv.empty()) {
    res.error = "empty command";
    return res;
  }
  const double cpu_s = L.cpu_s > 0 ? L.cpu_s : std::ceil(L.timeout_s);
  RunDir dir;
  if (!iso.namespaces) {
    dir.make();
    if (dir.path.empty()) {
      res.error = std::string("cannot make the run's directory under /tmp: ") + std::strerror(errno);
      return res;
    }
  }
  ChildPlan p;
  std::vector<char*> av, ev;
  make_plan(p, argv, L, ws, dir.path, iso, av, ev, cpu_s);
  UidLease lease;
  if (iso.root) {
    if (!lease.ok()) {
      res.error = "no free sandbox uid (all " + std::to_string(kUids) + " in use, or no lock directory)";
      return res;
    }
    p.uid = p.gid = lease.uid();
    if (!iso.namespaces && chown(p.work_host, p.uid, p.gid) != 0) {
      res.error = std::string("cannot hand the working directory to the sandbox uid: ") + std::strerror(errno);
      return res;
    }
  }
  RunCgroup cgroup(L.memory_mb, L.max_processes, L.cpus);
  if (!cgroup.error().empty()) {
    res.error = cgroup.error();
    return res;
  }

  const bool userns = iso.namespaces && iso.user_namespace;
  Pipe in = Pipe::make(), out = Pipe::make(), err = Pipe::make(), status = Pipe::make(), files = Pipe::make(),
       sync = Pipe::make();
  if (!in.ok() || !out.ok() || !err.ok() || !status.ok() || !files.ok() || !sync.ok()) {
    res.error = std::string("pipe: ") + std::strerror(errno);
    return res;
  }
  p.in_r = in.read.get();
  p.out_w = out.write.get();
  p.err_w = err.write.get();
  p.status_w = status.write.get();
  p.files_w = files.write.get();
  p.sync_r = sync.read.get();

  Stack stack;
  if (stack.base == MAP_FAILED) {
    res.error = "mmap for the child stack failed";
    return res;
  }
  int flags = SIGCHLD;
  if (iso.namespaces) flags |= kNsFlags | (userns ? CLONE_NEWUSER : 0);
  if (p.shared_net >= 0) flags &= ~CLONE_NEWNET;
  if (p.shared_ipc >= 0) flags &= ~CLONE_NEWIPC;
  auto t0 = std::chrono::steady_clock::now();
  pid_t init = cgroup.v2_fd() >= 0 ? clone_into_cgroup(flags, cgroup.v2_fd(), &p) : clone(child_init, stack.top(), flags, &p);
  int clone_errno = errno;
  // The child's ends belong to the child now.
  in.read.reset();
  out.write.reset();
  err.write.reset();
  status.write.reset();
  files.write.reset();
  sync.read.reset();
  if (init < 0) {
    res.error = std::string("clone: ") + std::strerror(clone_errno);
    return res;
  }
  std::string setup_error;
  if (userns) {
    const std::string id = std::to_string(kUsernsUid);
    if (!write_proc(init, "setgroups", "deny") || !write_proc(init, "uid_map", id + " " + std::to_string(getuid()) + " 1\n") ||
        !write_proc(init, "gid_map", id + " " + std::to_string(getgid()) + " 1\n"))
      setup_error = std::string("cannot write the user namespace's id maps: ") + std::strerror(errno);
  }
  if (setup_error.empty() && cgroup.active() && cgroup.v2_fd() < 0 && !cgroup.add(init)) setup_error = cgroup.error();
  if (setup_error.empty()) {
    char c = 1;
    if (write(sync.write.get(), &c, 1) != 1) setup_error = "cannot start the sandbox's init";
  }
  sync.write.reset();  // without the go, init ends at once
  std::string files_bytes;
  Supervision sv = supervise(init, RunPipes{std::move(in.write), std::move(out.read), std::move(err.read), std::move(files.read)},
                             setup_error.empty() ? stdin_data : std::string(), L, p.max_copy_back + (8 << 20), t0, res,
                             files_bytes);
  res.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  InitReport m;
  fcntl(status.read.get(), F_SETFL, O_NONBLOCK);
  sv.report_received = read(status.read.get(), &m, sizeof m) == (ssize_t)sizeof m;
  sv.memory_killed = cgroup.oom_killed();
  classify(m, sv, L, cpu_s, res);
  if (cgroup.active()) res.max_rss_kb = std::max(res.max_rss_kb, cgroup.peak_memory_kb());
  if (!setup_error.empty()) {
    res.status = Status::SandboxError;
    res.error = setup_error;
  }
  if (sv.report_received && !sv.killed_at_deadline && !sv.killed_at_output_cap && res.status != Status::SandboxError &&
      !take_files(files_bytes, ws)) {
    res.status = Status::SandboxError;
    res.error = "the files the run left could not be read back";
  }
  return res;
}

Result run(const std::vector<std::string>& argv, const std::string& stdin_data,
           const std::map<std::string, std::string>& files, const Limits& limits, const Options& options) {
  Workspace ws;
  for (const auto& [name, content] : files) ws.write(name, content);
  return run(argv, stdin_data, limits, ws, options);
}

std::string to_json(const Result& r) {
  nlohmann::json j = {{"status", to_string(r.status)},
                      {"exit_code", r.exit_code},
                      {"signal", r.signal},
                      {"stdout", r.out},
                      {"stderr", r.err},
                      {"wall_ms", std::round(r.wall_ms * 100) / 100},
                      {"cpu_ms", r.cpu_ms},
                      {"max_rss_kb", r.max_rss_kb}};
  if (!r.error.empty()) j["error"] = r.error;
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace grpo::sandbox

#include "sandbox/sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
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
#include <deque>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "sandbox/classify.h"
#include "sandbox/fd.h"
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

// The seccomp program, compiled once in the parent (libseccomp allocates; the child must not).
struct Filter {
  std::vector<sock_filter> code;
  std::string error;
};

const Filter& seccomp_filter() {
  static Filter f = [] {
    Filter out;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) {
      out.error = "seccomp_init failed";
      return out;
    }
    const char* deny[] = {
        "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount", "umount2", "pivot_root", "chroot",
        "bpf", "kexec_load", "kexec_file_load", "keyctl", "add_key", "request_key", "init_module", "finit_module",
        "delete_module", "reboot", "swapon", "swapoff", "setns", "unshare", "userfaultfd", "perf_event_open",
        "iopl", "ioperm", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "quotactl",
        "setrlimit", "prlimit64", "lookup_dcookie", "open_by_handle_at", "name_to_handle_at", "fanotify_init",
        "io_uring_setup", "io_uring_enter", "io_uring_register", "syslog", "sethostname", "setdomainname",
        "mknod", "mknodat", "capset", "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
        "setgroups", "setfsuid", "setfsgid", "vhangup", "mount_setattr", "move_mount", "open_tree", "fsopen",
        "fsconfig", "fsmount", "fspick", "kcmp", "pidfd_getfd", "nfsservctl", "uselib", "personality"};
    for (const char* name : deny) {
      int nr = seccomp_syscall_resolve_name(name);
      if (nr == __NR_SCMP_ERROR) continue;
      seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
    }
    // Sockets: AF_UNIX only (no network even if a namespace were shared).
    seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_NE, AF_UNIX));
    seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(socketpair), 1, SCMP_A0(SCMP_CMP_NE, AF_UNIX));
    // New namespaces through clone; clone3 hides its flags in memory, so make libc fall back.
    for (int flag : {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID, CLONE_NEWIPC, CLONE_NEWUTS, CLONE_NEWCGROUP})
      seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1, SCMP_A0(SCMP_CMP_MASKED_EQ, (scmp_datum_t)flag, (scmp_datum_t)flag));
    int clone3 = seccomp_syscall_resolve_name("clone3");
    if (clone3 != __NR_SCMP_ERROR) seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), clone3, 0);
    int fds[2];
    if (pipe(fds) != 0) {
      out.error = "pipe failed";
      seccomp_release(ctx);
      return out;
    }
    if (seccomp_export_bpf(ctx, fds[1]) != 0) out.error = "seccomp_export_bpf failed";
    close(fds[1]);
    std::string bytes;
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) bytes.append(buf, n);
    close(fds[0]);
    seccomp_release(ctx);
    out.code.resize(bytes.size() / sizeof(sock_filter));
    std::memcpy(out.code.data(), bytes.data(), out.code.size() * sizeof(sock_filter));
    if (out.code.empty() && out.error.empty()) out.error = "empty seccomp program";
    return out;
  }();
  return f;
}

std::atomic<uint32_t> g_run_counter{0};

// Everything the child needs, prepared before cloning.
struct ChildPlan {
  int in_r = -1, out_w = -1, err_w = -1, status_w = -1, sync_r = -1;
  const char* root = nullptr;     // empty directory for the new root
  const char* oldroot = nullptr;  // root + "/.old"
  const char* work = nullptr;     // the workspace on the host
  std::deque<std::string> strings;  // owns the strings below; a deque never moves its elements
  std::vector<std::pair<const char*, const char*>> binds;   // host dir -> path under root (read-only)
  std::vector<std::pair<const char*, const char*>> links;   // symlink target -> path under root
  std::vector<const char*> mkdirs;                           // under root
  std::vector<std::pair<const char*, const char*>> devs;    // host device -> file under root
  const char *proc = nullptr, *tmp = nullptr, *workdir = nullptr, *devdir = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* const* path_dirs = nullptr;
  rlimit cpu{}, as{}, nproc{}, fsize{}, nofile{}, core{0, 0};
  uid_t uid = 65534;
  gid_t gid = 65534;
  bool drop_uid = true;
  bool mount_isolation = true;
  bool use_seccomp = true;
  sock_fprog prog{};
};

void report(int fd, const InitReport& m) {
  ssize_t unused = write(fd, &m, sizeof m);
  (void)unused;
}

[[noreturn]] void fail(const ChildPlan& p, int stage) {
  InitReport m;
  m.stage = stage;
  m.err = errno;
  report(p.status_w, m);
  _exit(120);
}

int bind_ro(const char* src, const char* dst) {
  if (mount(src, dst, nullptr, MS_BIND | MS_REC, nullptr) != 0) return -1;
  return mount(nullptr, dst, nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr);
}

// Closes every descriptor except `keep` (sorted): init does not exec, so O_CLOEXEC does not help,
// and a pipe end of another concurrent run held here would keep that run from seeing EOF.
void close_all_but(int* keep, int n) {
  std::sort(keep, keep + n);
  int from = 3;
  for (int i = 0; i <= n; ++i) {
    int to = i < n ? keep[i] - 1 : ~0U >> 1;
    if (i < n && keep[i] < 3) continue;
    if (to >= from) {
      if (syscall(SYS_close_range, (unsigned)from, (unsigned)to, 0) != 0) {
        int hi = std::min(to, 65535);
        for (int fd = from; fd <= hi; ++fd) close(fd);
      }
    }
    if (i < n) from = keep[i] + 1;
  }
}

// pid 1 of the new namespaces.
int child_init(void* arg) {
  const ChildPlan& p = *static_cast<const ChildPlan*>(arg);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  {
    int keep[5];
    int n = 0;
    for (int fd : {p.in_r, p.out_w, p.err_w, p.status_w, p.sync_r})
      if (fd >= 0) keep[n++] = fd;
    close_all_but(keep, n);
  }
  if (p.sync_r >= 0) {  // wait until the parent has written the uid/gid maps
    char c;
    if (read(p.sync_r, &c, 1) != 1) fail(p, 1);
    close(p.sync_r);
  }
  if (p.mount_isolation) {
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) fail(p, 2);
    if (mount("tmpfs", p.root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755") != 0) fail(p, 3);
    for (const char* d : p.mkdirs)
      if (mkdir(d, 0755) != 0 && errno != EEXIST) fail(p, 4);
    for (auto& [target, link] : p.links)
      if (symlink(target, link) != 0) fail(p, 5);
    for (auto& [src, dst] : p.binds)
      if (bind_ro(src, dst) != 0) fail(p, 6);
    for (auto& [src, dst] : p.devs) {
      int fd = open(dst, O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
      if (fd < 0) fail(p, 7);
      close(fd);
      if (mount(src, dst, nullptr, MS_BIND, nullptr) != 0) fail(p, 8);
    }
    if (mount("proc", p.proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0) fail(p, 9);
    if (mount("tmpfs", p.tmp, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777") != 0) fail(p, 10);
    if (mount(p.work, p.workdir, nullptr, MS_BIND, nullptr) != 0) fail(p, 11);
    if (mount(nullptr, p.workdir, nullptr, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV, nullptr) != 0) fail(p, 12);
    if (syscall(SYS_pivot_root, p.root, p.oldroot) != 0) fail(p, 13);
    if (chdir("/") != 0) fail(p, 14);
    if (umount2("/.old", MNT_DETACH) != 0) fail(p, 15);
    rmdir("/.old");
    if (mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr) != 0) fail(p, 16);
  }
  sethostname("sandbox", 7);
  // A raw fork: glibc's fork() runs its at-fork handlers, which take malloc's locks, and another
  // thread of the (multi-threaded) parent may have held them when this process was cloned.
  pid_t prog = (pid_t)syscall(SYS_clone, SIGCHLD, nullptr, nullptr, nullptr, nullptr);
  if (prog < 0) fail(p, 17);
  if (prog == 0) {
    if (dup2(p.in_r, 0) < 0 || dup2(p.out_w, 1) < 0 || dup2(p.err_w, 2) < 0) _exit(121);
    for (int fd : {p.in_r, p.out_w, p.err_w, p.status_w})
      if (fd > 2) close(fd);
    setsid();
    if (chdir(p.mount_isolation ? "/work" : p.work) != 0) _exit(122);
    setrlimit(RLIMIT_CPU, &p.cpu);
    setrlimit(RLIMIT_AS, &p.as);
    setrlimit(RLIMIT_FSIZE, &p.fsize);
    setrlimit(RLIMIT_NOFILE, &p.nofile);
    setrlimit(RLIMIT_CORE, &p.core);
    if (p.drop_uid) {
      // Raw system calls: glibc's set*id wrappers broadcast the change to every thread it believes
      // the process has, and a child cloned from a multi-threaded parent inherits that belief
      // without the threads, so the broadcast would wait forever.
      if (syscall(SYS_setgroups, 0, nullptr) != 0 || syscall(SYS_setresgid, p.gid, p.gid, p.gid) != 0) _exit(123);
      setrlimit(RLIMIT_NPROC, &p.nproc);  // counts the new uid's processes
      if (syscall(SYS_setresuid, p.uid, p.uid, p.uid) != 0) _exit(123);
    } else {
      setrlimit(RLIMIT_NPROC, &p.nproc);
    }
    prctl(PR_SET_DUMPABLE, 0);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(124);
    if (p.use_seccomp && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &p.prog) != 0) _exit(125);
    // execvpe without allocation: try each PATH directory.
    const char* file = p.argv[0];
    if (std::strchr(file, '/')) {
      execve(file, p.argv, p.envp);
    } else {
      char buf[4096];
      for (const char* const* d = p.path_dirs; *d; ++d) {
        size_t a = std::strlen(*d), b = std::strlen(file);
        if (a + b + 2 > sizeof buf) continue;
        std::memcpy(buf, *d, a);
        buf[a] = '/';
        std::memcpy(buf + a + 1, file, b + 1);
        execve(buf, p.argv, p.envp);
      }
    }
    const char msg[] = "sandbox: cannot execute the program\n";
    ssize_t unused = write(2, msg, sizeof msg - 1);
    (void)unused;
    _exit(127);
  }
  close(p.in_r);
  close(p.out_w);
  close(p.err_w);
  int st = 0;
  rusage ru{};
  while (wait4(prog, &st, 0, &ru) < 0 && errno == EINTR) {
  }
  InitReport m;
  m.exited = WIFEXITED(st);
  m.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  m.sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
  m.cpu_ms = ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000 + ru.ru_stime.tv_sec * 1000 + ru.ru_stime.tv_usec / 1000;
  m.maxrss_kb = ru.ru_maxrss;
  report(p.status_w, m);
  _exit(0);  // every process left in the namespace dies with pid 1
}

}  // namespace

// ---------------------------------------------------------------------------------------------
std::string Isolation::summary() const {
  std::string s = "sandbox isolation: ";
  s += root ? "root (uid drop)" : "unprivileged";
  s += namespaces ? (user_namespace ? ", namespaces via a user namespace" : ", namespaces") : ", NO namespaces";
  s += seccomp ? ", seccomp" : ", NO seccomp";
  return s;
}

const Isolation& probe() {
  static Isolation iso = [] {
    Isolation i;
    i.root = geteuid() == 0;
    i.seccomp = prctl(PR_GET_SECCOMP) >= 0 && seccomp_filter().error.empty();
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
    return i;
  }();
  return iso;
}

// ---------------------------------------------------------------------------------------------
Workspace::Workspace(int64_t size_mb) {
  char tmpl[] = "/tmp/grpo-sandbox-XXXXXX";
  if (!mkdtemp(tmpl)) throw Error(std::string("sandbox: cannot create a workspace: ") + std::strerror(errno));
  path_ = tmpl;
  mkdir((path_ + "/work").c_str(), 0777);
  mkdir((path_ + "/root").c_str(), 0755);
  chmod((path_ + "/work").c_str(), 01777);
  if (geteuid() == 0) {
    std::string opts = "size=" + std::to_string(size_mb) + "m,mode=1777";
    if (mount("tmpfs", (path_ + "/work").c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) == 0) mounted_ = true;
  }
}

Workspace::~Workspace() {
  if (mounted_) umount2((path_ + "/work").c_str(), MNT_DETACH);
  // Remove what the runs left (plain directory mode) and the skeleton.
  auto rm = [](const std::string& dir, auto& self) -> void {
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n == "." || n == "..") continue;
      std::string p = dir + "/" + n;
      struct stat st;
      if (lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        self(p, self);
        rmdir(p.c_str());
      } else {
        unlink(p.c_str());
      }
    }
    closedir(d);
  };
  rm(path_, rm);
  rmdir(path_.c_str());
}

void Workspace::write(const std::string& name, const std::string& content, bool executable) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    throw Error("sandbox: file name '" + name + "' must be a plain name");
  std::string p = path_ + "/work/" + name;
  int fd = open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, executable ? 0755 : 0644);
  if (fd < 0) throw Error("sandbox: cannot write " + name + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n <= 0) {
      close(fd);
      throw Error("sandbox: cannot write " + name + ": " + std::strerror(errno));
    }
    off += n;
  }
  close(fd);
}

std::string Workspace::read(const std::string& name) const {
  // O_NOFOLLOW: a program may leave a symlink to a host file behind; never read through it.
  int fd = open((path_ + "/work/" + name).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) throw Error("sandbox: cannot read " + name + ": " + std::strerror(errno));
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, n);
  close(fd);
  return out;
}

// ---------------------------------------------------------------------------------------------
namespace {

// The child's plan, built before clone (the child allocates nothing): the new root's mounts, the
// program, its environment and limits, the seccomp filter. Pipe ends are filled in by run().
// `av` and `ev` receive argv and the environment (null-terminated), which the plan points into.
void make_plan(ChildPlan& p, const std::vector<std::string>& argv, const Limits& L, const Workspace& ws,
               const Isolation& iso, std::vector<char*>& av, std::vector<char*>& ev, double cpu_s) {
  const std::string base = ws.path();
  auto keep = [&](std::string s) { p.strings.push_back(std::move(s)); return p.strings.back().c_str(); };
  const std::string root = base + "/root";
  p.root = keep(root);
  p.oldroot = keep(root + "/.old");
  p.work = keep(base + "/work");
  p.mount_isolation = iso.namespaces;
  p.use_seccomp = iso.seccomp;
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
  p.workdir = keep(root + "/work");
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
  // Distinct uids per concurrent run keep RLIMIT_NPROC per run.
  p.uid = p.gid = 61000 + (g_run_counter++ % 2000);
  const Filter& filter = seccomp_filter();
  p.prog.len = (unsigned short)filter.code.size();
  p.prog.filter = const_cast<sock_filter*>(filter.code.data());
}

// Feeds stdin, drains stdout/stderr under their caps and enforces the wall clock until both
// output pipes close; kills init (and with it the whole namespace) at the deadline or the cap.
Supervision supervise(pid_t init, Fd stdin_w, Fd out_r, Fd err_r, const std::string& stdin_data, const Limits& L,
                      std::chrono::steady_clock::time_point t0, Result& res) {
  Supervision sv;
  fcntl(stdin_w.get(), F_SETFL, O_NONBLOCK);
  size_t in_off = 0;
  if (stdin_data.empty()) stdin_w.reset();
  Fd* outs[2] = {&out_r, &err_r};
  std::string* bufs[2] = {&res.out, &res.err};
  const auto deadline = t0 + std::chrono::microseconds((int64_t)(L.timeout_s * 1e6));
  auto kill_once = [&](bool& why) {
    if (!sv.killed_at_deadline && !sv.killed_at_output_cap) {
      why = true;
      kill(init, SIGKILL);
    }
  };
  while (out_r.valid() || err_r.valid()) {
    pollfd fds[3];
    int nf = 0, idx[3];
    for (int k = 0; k < 2; ++k)
      if (outs[k]->valid()) {
        fds[nf] = {outs[k]->get(), POLLIN, 0};
        idx[nf++] = k;
      }
    if (stdin_w.valid()) {
      fds[nf] = {stdin_w.get(), POLLOUT, 0};
      idx[nf++] = 2;
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) kill_once(sv.killed_at_deadline);
    int wait_ms = sv.killed_at_deadline || sv.killed_at_output_cap
                      ? 100
                      : (int)std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count());
    int r = poll(fds, nf, wait_ms);
    if (r < 0 && errno != EINTR) break;
    for (int i = 0; i < nf; ++i) {
      if (!fds[i].revents) continue;
      if (idx[i] == 2) {
        ssize_t n = write(stdin_w.get(), stdin_data.data() + in_off, stdin_data.size() - in_off);
        if (n > 0) in_off += n;
        if (n < 0 && errno != EAGAIN) in_off = stdin_data.size();
        if (in_off >= stdin_data.size()) stdin_w.reset();
        continue;
      }
      int k = idx[i];
      char buf[65536];
      ssize_t n = read(outs[k]->get(), buf, sizeof buf);
      if (n <= 0) {
        outs[k]->reset();
        continue;
      }
      size_t room = L.max_output_bytes > bufs[k]->size() ? L.max_output_bytes - bufs[k]->size() : 0;
      bufs[k]->append(buf, std::min<size_t>(room, n));
      if ((size_t)n > room) kill_once(sv.killed_at_output_cap);
    }
  }
  return sv;
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

}  // namespace

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
  ChildPlan p;
  std::vector<char*> av, ev;
  make_plan(p, argv, L, ws, iso, av, ev, cpu_s);

  const bool userns = iso.namespaces && iso.user_namespace;
  Pipe in = Pipe::make(), out = Pipe::make(), err = Pipe::make(), status = Pipe::make(), sync;
  if (userns) sync = Pipe::make();
  if (!in.ok() || !out.ok() || !err.ok() || !status.ok() || (userns && !sync.ok())) {
    res.error = std::string("pipe: ") + std::strerror(errno);
    return res;
  }
  p.in_r = in.read.get();
  p.out_w = out.write.get();
  p.err_w = err.write.get();
  p.status_w = status.write.get();
  p.sync_r = sync.read.get();

  Stack stack;
  if (stack.base == MAP_FAILED) {
    res.error = "mmap for the child stack failed";
    return res;
  }
  int flags = SIGCHLD;
  if (iso.namespaces) flags |= kNsFlags | (userns ? CLONE_NEWUSER : 0);
  auto t0 = std::chrono::steady_clock::now();
  pid_t init = clone(child_init, stack.top(), flags, &p);
  int clone_errno = errno;
  // The child's ends belong to the child now.
  in.read.reset();
  out.write.reset();
  err.write.reset();
  status.write.reset();
  sync.read.reset();
  if (init < 0) {
    res.error = std::string("clone: ") + std::strerror(clone_errno);
    return res;
  }
  if (userns) {
    auto put = [&](const std::string& file, const std::string& text) {
      std::ofstream f("/proc/" + std::to_string(init) + "/" + file);
      f << text;
    };
    put("setgroups", "deny");
    put("uid_map", "0 " + std::to_string(getuid()) + " 1\n");
    put("gid_map", "0 " + std::to_string(getgid()) + " 1\n");
    char c = 1;
    ssize_t unused = write(sync.write.get(), &c, 1);
    (void)unused;
    sync.write.reset();
  }
  Supervision sv = supervise(init, std::move(in.write), std::move(out.read), std::move(err.read), stdin_data, L, t0, res);
  int st = 0;
  while (waitpid(init, &st, 0) < 0 && errno == EINTR) {
  }
  res.wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  InitReport m;
  sv.report_received = read(status.read.get(), &m, sizeof m) == (ssize_t)sizeof m;
  classify(m, sv, L, cpu_s, res);
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

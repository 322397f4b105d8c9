#include "sandbox/seccomp_filter.h"

#include <errno.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

namespace grpo::sandbox {

namespace {

// What test programs, interpreters and compilers do: files inside the sandbox's own tree, memory,
// processes and threads of their own, time, signals to themselves, pipes and AF_UNIX sockets.
const std::vector<std::string> kAllowed = {
    // files and directories
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "open",
    "openat", "openat2", "close", "close_range", "creat", "lseek", "dup", "dup2", "dup3", "fcntl", "flock", "fsync",
    "fdatasync", "sync_file_range", "ftruncate", "truncate", "fallocate", "fadvise64", "stat", "fstat", "lstat",
    "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2", "getdents", "getdents64",
    "getcwd", "chdir", "fchdir", "rename", "renameat", "renameat2", "mkdir", "mkdirat", "rmdir", "link", "linkat",
    "unlink", "unlinkat", "symlink", "symlinkat", "readlink", "readlinkat", "chmod", "fchmod", "fchmodat",
    "fchmodat2", "chown", "fchown", "lchown", "fchownat", "umask", "utime", "utimes", "utimensat", "futimesat",
    "sendfile", "copy_file_range", "splice", "tee", "ioctl", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
    "llistxattr", "flistxattr", "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    // memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync", "mincore", "membarrier", "get_mempolicy",
    // processes and threads
    "clone", "clone3", "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "kill",
    "tkill", "tgkill", "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getgroups",
    "getresuid", "getresgid", "getpgrp", "getpgid", "setpgid", "getsid", "setsid", "prctl", "arch_prctl",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "futex", "futex_waitv", "sched_yield",
    "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_getscheduler", "sched_get_priority_max",
    "sched_get_priority_min", "sched_rr_get_interval", "getpriority", "setpriority", "getrlimit", "prlimit64",
    "getrusage", "times", "sysinfo", "uname", "getrandom", "capget", "pidfd_open", "pidfd_send_signal",
    // time
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time", "alarm", "setitimer",
    "getitimer", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun", "timer_delete",
    "timerfd_create", "timerfd_settime", "timerfd_gettime",
    // signals
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "pause", "signalfd", "signalfd4",
    // waiting and pipes
    "pipe", "pipe2", "poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2",
    // sockets (AF_UNIX: checked below); no bind or listen: no run owns an address another can reach
    "socket", "socketpair", "connect", "accept", "accept4", "sendto", "recvfrom", "sendmsg",
    "recvmsg", "sendmmsg", "recvmmsg", "shutdown", "getsockname", "getpeername", "getsockopt", "setsockopt",
};

// libseccomp -> a BPF program in memory.
BpfProgram export_bpf(scmp_filter_ctx ctx) {
  BpfProgram out;
  int fds[2];
  if (pipe(fds) != 0) {
    out.error = "pipe failed";
    return out;
  }
  if (seccomp_export_bpf(ctx, fds[1]) != 0) out.error = "seccomp_export_bpf failed";
  close(fds[1]);
  std::string bytes;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) bytes.append(buf, n);
  close(fds[0]);
  out.code.resize(bytes.size() / sizeof(sock_filter));
  std::memcpy(out.code.data(), bytes.data(), out.code.size() * sizeof(sock_filter));
  if (out.code.empty() && out.error.empty()) out.error = "empty seccomp program";
  return out;
}

int resolve(const char* name) { return seccomp_syscall_resolve_name(name); }

}  // namespace

const std::vector<std::string>& allowed_syscalls() { return kAllowed; }

const BpfProgram& program_filter() {
  static BpfProgram f = [] {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(ENOSYS));
    if (!ctx) return BpfProgram{{}, "seccomp_init failed"};
    bool ok = true;
    auto allow = [&](const char* name, unsigned n = 0, const scmp_arg_cmp* args = nullptr) {
      int nr = resolve(name);
      if (nr == __NR_SCMP_ERROR) return;  // not on this architecture
      ok &= seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, n, args) == 0;
    };
    for (const auto& name : kAllowed) {
      const std::string& s = name;
      if (s == "socket" || s == "socketpair" || s == "clone" || s == "clone3" || s == "prlimit64" || s == "ioctl")
        continue;  // conditional, below
      allow(s.c_str());
    }
    // Sockets: AF_UNIX only (no network even if a namespace were shared).
    scmp_arg_cmp unix_only = SCMP_A0(SCMP_CMP_EQ, AF_UNIX);
    allow("socket", 1, &unix_only);
    allow("socketpair", 1, &unix_only);
    scmp_arg_cmp not_unix = SCMP_A0(SCMP_CMP_NE, AF_UNIX);
    for (const char* name : {"socket", "socketpair"})
      ok &= seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(EACCES), resolve(name), 1, &not_unix) == 0;
    // clone without any namespace flag; clone3 hides its flags in memory, so libc must fall back.
    const scmp_datum_t ns = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS |
                            CLONE_NEWCGROUP | 0x00000080 /* CLONE_NEWTIME */;
    scmp_arg_cmp no_ns = SCMP_A0(SCMP_CMP_MASKED_EQ, ns, 0);
    allow("clone", 1, &no_ns);
    // prlimit64 reads limits (getrlimit goes through it); setting them is refused.
    scmp_arg_cmp read_only = SCMP_A2(SCMP_CMP_EQ, 0);
    allow("prlimit64", 1, &read_only);
    // ioctl: anything but pushing input into a terminal (TIOCSTI) or the console (TIOCLINUX), whose
    // numbers are 0x5412 and 0x541C. The kernel reads the request as 32 bits: so do the rules.
    const scmp_datum_t sti = TIOCSTI, linux_console = 0x541C;
    scmp_arg_cmp below = SCMP_A1_32(SCMP_CMP_LT, sti), above = SCMP_A1_32(SCMP_CMP_GT, linux_console);
    allow("ioctl", 1, &below);
    allow("ioctl", 1, &above);
    for (scmp_datum_t cmd = sti + 1; cmd < linux_console; ++cmd) {
      scmp_arg_cmp eq = SCMP_A1_32(SCMP_CMP_EQ, cmd);
      allow("ioctl", 1, &eq);
    }
    // mknod: FIFOs only (device nodes would be useless on the nodev mounts anyway).
    scmp_arg_cmp fifo1 = SCMP_A1_32(SCMP_CMP_MASKED_EQ, S_IFMT, S_IFIFO);
    scmp_arg_cmp fifo2 = SCMP_A2_32(SCMP_CMP_MASKED_EQ, S_IFMT, S_IFIFO);
    allow("mknod", 1, &fifo1);
    allow("mknodat", 1, &fifo2);
    BpfProgram out = ok ? export_bpf(ctx) : BpfProgram{{}, "seccomp_rule_add failed"};
    seccomp_release(ctx);
    return out;
  }();
  return f;
}

const BpfProgram& init_filter() {
  static BpfProgram f = [] {
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
    if (!ctx) return BpfProgram{{}, "seccomp_init failed"};
    bool ok = true;
    for (const char* name : {"wait4", "waitid", "read", "write", "open", "openat", "close", "fstat", "newfstatat",
                             "statx", "getdents64", "lseek", "clock_gettime", "rt_sigreturn", "exit", "exit_group"}) {
      int nr = resolve(name);
      if (nr != __NR_SCMP_ERROR) ok &= seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) == 0;
    }
    BpfProgram out = ok ? export_bpf(ctx) : BpfProgram{{}, "seccomp_rule_add failed"};
    seccomp_release(ctx);
    return out;
  }();
  return f;
}

}  // namespace grpo::sandbox

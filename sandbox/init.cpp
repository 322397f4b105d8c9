#include "sandbox/init.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "sandbox/classify.h"

namespace grpo::sandbox {

namespace {

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

bool write_all(int fd, const void* data, size_t n) {
  const char* c = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= (size_t)w;
  }
  return true;
}

int bind_ro(const char* src, const char* dst) {
  if (mount(src, dst, nullptr, MS_BIND | MS_REC, nullptr) != 0) return -1;
  return mount(nullptr, dst, nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr);
}

// Closes every descriptor except `keep` (sorted): init does not exec, so O_CLOEXEC does not help,
// and a pipe end of another concurrent run held here would keep that run from seeing EOF.
void close_all_but(int* keep, int n) {
  for (int i = 1; i < n; ++i)  // insertion sort: a handful of descriptors
    for (int j = i; j > 0 && keep[j - 1] > keep[j]; --j) std::swap(keep[j - 1], keep[j]);
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

// The program's setup step that failed, sent to init on the close-on-exec pipe.
struct ExecFailure {
  int stage = 0, err = 0;
};

struct ProgramArgs {
  const ChildPlan* plan;
  int exec_fail_w;
};

[[noreturn]] void program_fail(const ProgramArgs& a, int stage) {
  ExecFailure f{stage, errno};
  write_all(a.exec_fail_w, &f, sizeof f);
  _exit(127);
}

// The program's side, between clone and exec (runs on init's memory: CLONE_VM | CLONE_VFORK).
int program_main(void* arg) {
  const ProgramArgs& a = *static_cast<const ProgramArgs*>(arg);
  const ChildPlan& p = *a.plan;
  if (dup2(p.in_r, 0) < 0 || dup2(p.out_w, 1) < 0 || dup2(p.err_w, 2) < 0) program_fail(a, 20);
  for (int fd : {p.in_r, p.out_w, p.err_w, p.status_w, p.files_w})
    if (fd > 2) close(fd);
  setsid();
  if (chdir(p.mount_isolation ? "/work" : p.work_host) != 0) program_fail(a, 21);
  setrlimit(RLIMIT_CPU, &p.cpu);
  setrlimit(RLIMIT_AS, &p.as);
  setrlimit(RLIMIT_FSIZE, &p.fsize);
  setrlimit(RLIMIT_NOFILE, &p.nofile);
  setrlimit(RLIMIT_CORE, &p.core);
  if (p.drop_uid) {
    // Raw system calls: glibc's set*id wrappers broadcast the change to every thread it believes
    // the process has, and a child cloned from a multi-threaded parent inherits that belief
    // without the threads, so the broadcast would wait forever. The new uid leaves no capability.
    if (syscall(SYS_setgroups, 0, nullptr) != 0 || syscall(SYS_setresgid, p.gid, p.gid, p.gid) != 0) program_fail(a, 22);
    setrlimit(RLIMIT_NPROC, &p.nproc);  // counts the new uid's processes
    if (syscall(SYS_setresuid, p.uid, p.uid, p.uid) != 0) program_fail(a, 22);
  } else {
    setrlimit(RLIMIT_NPROC, &p.nproc);
    if (p.mount_isolation) {
      // User-namespace mode: init holds every capability of the run's namespace; the program none,
      // and cannot get one back by exec (empty bounding set).
      for (int cap = 0; cap <= 63; ++cap) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
      __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
      __user_cap_data_struct data[2] = {};
      if (syscall(SYS_capset, &hdr, data) != 0) program_fail(a, 22);
    }
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) program_fail(a, 23);
  if (p.use_seccomp && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &p.program_filter) != 0) program_fail(a, 24);
  // execvpe without allocation: try each PATH directory. A missing program is the program's
  // failure (exit 127, as a shell says it), not the sandbox's.
  const char* file = p.argv[0];
  if (std::strchr(file, '/')) {
    execve(file, p.argv, p.envp);
  } else {
    char buf[4096];
    for (const char* const* d = p.path_dirs; *d; ++d) {
      size_t n1 = std::strlen(*d), n2 = std::strlen(file);
      if (n1 + n2 + 2 > sizeof buf) continue;
      std::memcpy(buf, *d, n1);
      buf[n1] = '/';
      std::memcpy(buf + n1 + 1, file, n2 + 1);
      execve(buf, p.argv, p.envp);
    }
  }
  const char msg[] = "sandbox: cannot execute the program\n";
  write_all(2, msg, sizeof msg - 1);
  _exit(127);
}

void write_workspace(const ChildPlan& p) {
  for (const PlannedFile& f : p.files) {
    int fd = open(f.path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, f.mode);
    if (fd < 0) fail(p, 19);
    if (p.drop_uid && fchown(fd, p.uid, p.gid) != 0) fail(p, 19);  // the program owns its workspace
    if (fchmod(fd, f.mode) != 0 || !write_all(fd, f.data, f.size)) fail(p, 19);
    close(fd);
  }
}

// Sends the top-level regular files of the workspace changed since `since` (ctime, which a
// program cannot set back) on the files pipe, then an empty record. Links, directories, devices
// and FIFOs never come back; nor more than max_copy_back bytes.
void send_changed_files(const ChildPlan& p, const timespec& since) {
  const char* dir_path = p.mount_isolation ? "/work" : p.work_host;
  int dir = open(dir_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  uint64_t sent = 0;
  alignas(8) char entries[16384];
  char buf[65536];
  while (dir >= 0) {
    long n = syscall(SYS_getdents64, dir, entries, sizeof entries);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      struct Entry {
        uint64_t ino;
        int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[1];
      };
      const Entry* e = reinterpret_cast<const Entry*>(entries + off);
      off += e->reclen;
      if (e->type != DT_REG && e->type != DT_UNKNOWN) continue;
      int fd = openat(dir, e->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
      if (fd < 0) continue;
      struct stat st;
      bool changed = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                     (st.st_ctim.tv_sec > since.tv_sec ||
                      (st.st_ctim.tv_sec == since.tv_sec && st.st_ctim.tv_nsec >= since.tv_nsec));
      if (!changed || sent + (uint64_t)st.st_size > p.max_copy_back) {
        close(fd);
        continue;
      }
      FileRecord r;
      r.name_len = (uint32_t)std::strlen(e->name);
      r.mode = st.st_mode & 0777;
      r.size = (uint64_t)st.st_size;
      if (!write_all(p.files_w, &r, sizeof r) || !write_all(p.files_w, e->name, r.name_len)) return;
      // Exactly r.size bytes: a file that shrank meanwhile is padded, one that grew is cut.
      uint64_t left = r.size;
      while (left > 0) {
        ssize_t got = read(fd, buf, std::min<uint64_t>(left, sizeof buf));
        if (got <= 0) {
          std::memset(buf, 0, sizeof buf);
          got = (ssize_t)std::min<uint64_t>(left, sizeof buf);
        }
        if (!write_all(p.files_w, buf, (size_t)got)) return;
        left -= (uint64_t)got;
      }
      sent += r.size;
      close(fd);
    }
  }
  FileRecord end;
  write_all(p.files_w, &end, sizeof end);
}

}  // namespace

int child_init(void* arg) {
  const ChildPlan& p = *static_cast<const ChildPlan*>(arg);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  {
    int keep[8];
    int n = 0;
    for (int fd : {p.in_r, p.out_w, p.err_w, p.status_w, p.files_w, p.sync_r, p.shared_net, p.shared_ipc})
      if (fd >= 0) keep[n++] = fd;
    close_all_but(keep, n);
  }
  // Never hold the host's terminal (or whatever the host's stdio is).
  int null_fd = open(p.dev_null, O_RDWR | O_CLOEXEC);
  if (null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(null_fd, 1) < 0 || dup2(null_fd, 2) < 0) fail(p, 26);
  if (null_fd > 2) close(null_fd);
  // The go: uid/gid maps written (user-namespace mode), init moved into the run's cgroup.
  char c;
  if (read(p.sync_r, &c, 1) != 1) fail(p, 1);
  close(p.sync_r);
  // From here /proc/1 is closed to the program, whatever its uid.
  prctl(PR_SET_DUMPABLE, 0);
  if (p.shared_net >= 0 && (setns(p.shared_net, CLONE_NEWNET) != 0 || close(p.shared_net) != 0)) fail(p, 27);
  if (p.shared_ipc >= 0 && (setns(p.shared_ipc, CLONE_NEWIPC) != 0 || close(p.shared_ipc) != 0)) fail(p, 27);
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
    if (mount("tmpfs", p.workdir, "tmpfs", MS_NOSUID | MS_NODEV, p.work_tmpfs_options) != 0) fail(p, 18);
    if (p.drop_uid && chown(p.workdir, p.uid, p.gid) != 0) fail(p, 18);
    write_workspace(p);
    if (syscall(SYS_pivot_root, p.root, p.oldroot) != 0) fail(p, 13);
    if (chdir("/") != 0) fail(p, 14);
    if (umount2("/.old", MNT_DETACH) != 0) fail(p, 15);
    rmdir("/.old");
    if (mount(nullptr, "/", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr) != 0) fail(p, 16);
    sethostname("sandbox", 7);
  } else {
    write_workspace(p);
  }
  // What changed from here on goes back (the coarse clock: file times are taken from it).
  timespec started{};
  clock_gettime(CLOCK_REALTIME_COARSE, &started);

  int exec_fail[2];
  if (pipe2(exec_fail, O_CLOEXEC) != 0) fail(p, 17);
  ProgramArgs args{&p, exec_fail[1]};
  alignas(16) char program_stack[64 << 10];  // on init's stack; init waits while the program uses it
  pid_t prog = clone(program_main, program_stack + sizeof program_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
  if (prog < 0) fail(p, 17);
  close(exec_fail[1]);
  close(p.in_r);
  close(p.out_w);
  close(p.err_w);
  if (p.use_seccomp && p.init_filter.len > 0) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &p.init_filter) != 0)
      fail(p, 25);
  }
  ExecFailure ef;
  bool setup_failed = read(exec_fail[0], &ef, sizeof ef) == (ssize_t)sizeof ef;
  close(exec_fail[0]);
  int st = 0;
  rusage ru{};
  while (syscall(SYS_wait4, prog, &st, 0, &ru) < 0 && errno == EINTR) {
  }
  if (setup_failed) {
    errno = ef.err;
    fail(p, ef.stage);
  }
  if (p.files_w >= 0) send_changed_files(p, started);
  InitReport m;
  m.exited = WIFEXITED(st);
  m.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  m.sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
  m.cpu_ms = ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000 + ru.ru_stime.tv_sec * 1000 + ru.ru_stime.tv_usec / 1000;
  m.maxrss_kb = ru.ru_maxrss;
  report(p.status_w, m);
  _exit(0);  // every process left in the namespace dies with pid 1
}

}  // namespace grpo::sandbox

// The child side of a run: the sandbox's init (pid 1 of the run's namespaces) and the program it
// starts. Everything here runs after clone() in a copy of a possibly multi-threaded process, so it
// makes system calls only, on memory prepared beforehand (ChildPlan): no allocation, no locks.
//
// init: waits for the supervisor's go (uid maps and cgroup written), makes itself unreadable
// (PR_SET_DUMPABLE 0: the program, though it may share init's uid, cannot open /proc/1/mem,
// environ or fd), points its own stdio at /dev/null, builds the new root (read-only binds, a
// bounded tmpfs at /work holding the workspace's files), starts the program, installs a narrow
// filter of its own, waits, sends back the top-level regular files the program created or
// changed, and reports how the program ended on a pipe the program never holds.
//
// The program: stdio from the supervisor's pipes, a session of its own, rlimits, an unprivileged
// uid (root mode) or no capabilities (user-namespace mode), no_new_privs, the allow-list filter.
// A failure before exec is reported on a close-on-exec pipe, never through an exit status.
#pragma once

#include <linux/filter.h>
#include <sys/resource.h>
#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <string>
#include <utility>
#include <vector>

namespace grpo::sandbox {

// A file init writes into the workspace before the program starts.
struct PlannedFile {
  const char* path = nullptr;  // under the new root's /work (or the weak-mode directory)
  const char* data = nullptr;
  size_t size = 0;
  mode_t mode = 0644;
};

// What init sends back per changed file on the files pipe, followed by the name and the bytes.
struct FileRecord {
  uint32_t name_len = 0;
  uint32_t mode = 0;
  uint64_t size = 0;
};

struct ChildPlan {
  int in_r = -1, out_w = -1, err_w = -1, status_w = -1, files_w = -1, sync_r = -1;
  int shared_net = -1, shared_ipc = -1;  // root mode: the empty network and IPC namespaces runs join
  const char* root = nullptr;     // empty directory for the new root
  const char* oldroot = nullptr;  // root + "/.old"
  const char* work_host = nullptr;  // weak mode (no mount namespace): the program's directory on the host
  const char* work_tmpfs_options = nullptr;  // "size=...m,mode=0700"
  std::deque<std::string> strings;  // owns the strings below; a deque never moves its elements
  std::vector<std::pair<const char*, const char*>> binds;   // host dir -> path under root (read-only)
  std::vector<std::pair<const char*, const char*>> links;   // symlink target -> path under root
  std::vector<const char*> mkdirs;                           // under root
  std::vector<std::pair<const char*, const char*>> devs;    // host device -> file under root
  std::vector<PlannedFile> files;
  const char *proc = nullptr, *tmp = nullptr, *workdir = nullptr, *dev_null = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* const* path_dirs = nullptr;
  rlimit cpu{}, as{}, nproc{}, fsize{}, nofile{}, core{0, 0};
  uid_t uid = 65534;  // the program's uid and gid (root mode: dropped to; user namespace: mapped)
  gid_t gid = 65534;
  bool drop_uid = true;         // root mode
  bool mount_isolation = true;  // namespaces available
  bool use_seccomp = true;
  uint64_t max_copy_back = 0;   // bytes of changed files init sends back at most
  sock_fprog program_filter{}, init_filter{};
};

// The function clone() runs as init.
int child_init(void* plan);

}  // namespace grpo::sandbox

#include "sandbox/cgroup.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>

#include "util/files.h"

namespace grpo::sandbox {

namespace {

std::string read_text(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) out.append(buf, n);
  close(fd);
  return out;
}

bool write_text(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write(fd, text.data(), text.size()) == (ssize_t)text.size();
  close(fd);
  return ok;
}

bool has_word(const std::string& text, const std::string& word) {
  std::istringstream in(text);
  std::string w;
  while (in >> w)
    if (w == word) return true;
  return false;
}

// "key N" lines (memory.events, memory.oom_control).
int64_t keyed_value(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string k;
  int64_t v;
  while (in >> k >> v)
    if (k == key) return v;
  return 0;
}

// Can a group be made (and removed) here?
bool can_make_groups(const std::string& dir) {
  std::string probe = dir + "/grpo-sandbox-probe-" + std::to_string(getpid());
  if (mkdir(probe.c_str(), 0755) != 0) return false;
  rmdir(probe.c_str());
  return true;
}

// Groups named grpo-sandbox-PID-N whose PID is gone: left by a sandbox process that was killed.
void remove_stale(const std::string& dir) {
  for (const auto& name : list_directory(dir)) {
    if (name.rfind("grpo-sandbox-", 0) != 0) continue;
    pid_t pid = (pid_t)std::atol(name.c_str() + 13);
    if (pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH)) continue;
    rmdir((dir + "/" + name).c_str());
  }
}

CgroupSupport detect() {
  CgroupSupport s;
  // This process's group per hierarchy ("" = the v2 one), and where each hierarchy is mounted.
  std::map<std::string, std::string> own, mount, mount_root;
  {
    std::istringstream in(read_text("/proc/self/cgroup"));
    std::string line;
    while (std::getline(in, line)) {
      size_t a = line.find(':'), b = line.find(':', a + 1);
      if (a == std::string::npos || b == std::string::npos) continue;
      std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
      std::istringstream cs(controllers);
      std::string c;
      if (controllers.empty()) own[""] = path;
      while (std::getline(cs, c, ',')) own[c] = path;
    }
  }
  {
    std::istringstream in(read_text("/proc/self/mountinfo"));
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string id, parent, devno, root, point;
      f >> id >> parent >> devno >> root >> point;
      size_t dash = line.find(" - ");
      if (dash == std::string::npos) continue;
      std::istringstream tail(line.substr(dash + 3));
      std::string fstype, source, opts;
      tail >> fstype >> source >> opts;
      if (fstype == "cgroup2") {
        mount[""] = point;
        mount_root[""] = root;
      } else if (fstype == "cgroup") {
        std::istringstream os(opts);
        std::string o;
        while (std::getline(os, o, ','))
          if (o == "memory" || o == "pids" || o == "cpu") {
            mount[o] = point;
            mount_root[o] = root;
          }
      }
    }
  }
  auto dir_of = [&](const std::string& key) -> std::string {
    if (!mount.count(key) || !own.count(key)) return "";
    std::string path = own[key], root = mount_root[key];
    if (root != "/" && path.rfind(root, 0) == 0) path = path.substr(root.size());
    return mount[key] + (path == "/" ? "" : path);
  };
  // v2: a named delegated group, or our own if it already delegates memory and pids.
  std::string why;
  const char* named = std::getenv("GRPO_SANDBOX_CGROUP");
  if (named && std::string(named) == "off") {
    s.why_not = "GRPO_SANDBOX_CGROUP=off";
    return s;
  }
  const bool named_v2 = named && *named && std::string(named) != "v1";
  std::string v2 = named_v2 ? std::string(named) : dir_of("");
  if (!v2.empty()) {
    std::string sub = read_text(v2 + "/cgroup.subtree_control");
    if (!has_word(sub, "memory") || !has_word(sub, "pids"))
      why = "cgroup v2 group " + v2 + " does not delegate memory and pids (cgroup.subtree_control: '" +
            sub.substr(0, sub.find('\n')) + "')";
    else if (!can_make_groups(v2))
      why = "cannot make groups under " + v2 + ": " + std::strerror(errno);
    else {
      s.version = CgroupSupport::Version::V2;
      s.v2_parent = v2;
      remove_stale(v2);
      return s;
    }
  }
  // v1 only when asked for: moving a process into a v1 group waits for an RCU grace period, which
  // costs short runs about a third of their throughput (v2 starts init inside its group).
  if (named && std::string(named) == "v1") {
    std::string mem = dir_of("memory"), pids = dir_of("pids"), cpu = dir_of("cpu");
    if (!mem.empty() && can_make_groups(mem)) {
      s.version = CgroupSupport::Version::V1;
      s.v1_memory = mem;
      if (!pids.empty() && can_make_groups(pids)) s.v1_pids = pids;
      if (!cpu.empty() && can_make_groups(cpu)) s.v1_cpu = cpu;
      for (const auto& d : {s.v1_memory, s.v1_pids, s.v1_cpu})
        if (!d.empty()) remove_stale(d);
      return s;
    }
    why = "GRPO_SANDBOX_CGROUP=v1 but no writable cgroup v1 memory hierarchy";
  }
  s.why_not = why.empty() ? "no delegated cgroup v2 group (set GRPO_SANDBOX_CGROUP to one, or to v1 for cgroup v1)" : why;
  return s;
}

std::atomic<uint64_t> g_group_counter{0};

}  // namespace

std::string CgroupSupport::summary() const {
  switch (version) {
    case Version::V2: return "cgroup v2 at " + v2_parent + " (memory, pids, cpu per run)";
    case Version::V1:
      return std::string("cgroup v1 (memory") + (v1_pids.empty() ? "" : ", pids") + (v1_cpu.empty() ? "" : ", cpu") +
             " per run)";
    case Version::None: break;
  }
  return "no cgroup: per-process rlimits only (" + why_not + ")";
}

const CgroupSupport& cgroup_support() {
  static CgroupSupport s = detect();
  return s;
}

namespace {

// Idle groups (each the dirs of one run), reused by the next run.
struct Pool {
  std::mutex mu;
  std::vector<std::vector<std::string>> idle;
  static Pool& get() {
    static Pool* p = [] {
      auto* pool = new Pool;
      std::atexit([] { Pool::get().clear(); });
      return pool;
    }();
    return *p;
  }
  void clear() {
    std::lock_guard<std::mutex> g(mu);
    for (auto& dirs : idle)
      for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) rmdir(it->c_str());
    idle.clear();
  }
};

std::vector<std::string> make_groups(const CgroupSupport& s, std::string& error) {
  const std::string name = "grpo-sandbox-" + std::to_string(getpid()) + "-" + std::to_string(g_group_counter++);
  std::vector<std::string> dirs;
  std::vector<std::string> parents;
  if (s.version == CgroupSupport::Version::V2) {
    parents = {s.v2_parent};
  } else {
    parents = {s.v1_memory};
    if (!s.v1_pids.empty()) parents.push_back(s.v1_pids);
    if (!s.v1_cpu.empty()) parents.push_back(s.v1_cpu);
  }
  for (const auto& parent : parents) {
    std::string dir = parent + "/" + name;
    if (mkdir(dir.c_str(), 0755) != 0) {
      error = "cannot make cgroup " + dir + ": " + std::strerror(errno);
      for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) rmdir(it->c_str());
      return {};
    }
    dirs.push_back(dir);
  }
  return dirs;
}

}  // namespace

RunCgroup::RunCgroup(int64_t memory_mb, int64_t max_processes, double cpus) {
  const CgroupSupport& s = cgroup_support();
  version_ = s.version;
  if (version_ == CgroupSupport::Version::None) return;
  {
    Pool& pool = Pool::get();
    std::lock_guard<std::mutex> g(pool.mu);
    if (!pool.idle.empty()) {
      dirs_ = std::move(pool.idle.back());
      pool.idle.pop_back();
    }
  }
  if (dirs_.empty()) dirs_ = make_groups(s, error_);
  if (dirs_.empty()) return;
  const std::string bytes = std::to_string(memory_mb << 20), procs = std::to_string(max_processes);
  const int64_t period = 100000, quota = cpus > 0 ? std::max<int64_t>(1000, std::llround(cpus * period)) : -1;
  auto set = [&](const std::string& dir, const char* file, const std::string& value) {
    if (!write_text(dir + "/" + file, value) && error_.empty())
      error_ = std::string("cannot set ") + dir + "/" + file + ": " + std::strerror(errno);
  };
  const std::string& mem = dirs_[0];
  if (version_ == CgroupSupport::Version::V2) {
    set(mem, "memory.max", bytes);
    set(mem, "pids.max", procs);
    write_text(mem + "/memory.swap.max", "0");   // absent without swap accounting
    write_text(mem + "/memory.oom.group", "1");  // an out-of-memory kill takes the whole run
    write_text(mem + "/cpu.max", quota > 0 ? std::to_string(quota) + " " + std::to_string(period) : "max");
    peak_reset_ = write_text(mem + "/memory.peak", "reset");  // 6.12+; otherwise the peak is not the run's
    oom_kills_before_ = keyed_value(read_text(mem + "/memory.events"), "oom_kill");
    v2_fd_ = open(mem.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (v2_fd_ < 0 && error_.empty()) error_ = "cannot open cgroup " + mem + ": " + std::strerror(errno);
  } else {
    // memsw must stay >= the memory limit: lower it after, raise it before.
    write_text(mem + "/memory.memsw.limit_in_bytes", "-1");
    set(mem, "memory.limit_in_bytes", bytes);
    write_text(mem + "/memory.memsw.limit_in_bytes", bytes);  // absent without swap accounting
    peak_reset_ = write_text(mem + "/memory.max_usage_in_bytes", "0");
    oom_kills_before_ = keyed_value(read_text(mem + "/memory.oom_control"), "oom_kill");
    for (size_t i = 1; i < dirs_.size(); ++i) {
      if (dirs_[i].rfind(s.v1_pids, 0) == 0 && !s.v1_pids.empty()) set(dirs_[i], "pids.max", procs);
      if (dirs_[i].rfind(s.v1_cpu, 0) == 0 && !s.v1_cpu.empty()) {
        write_text(dirs_[i] + "/cpu.cfs_period_us", std::to_string(period));
        write_text(dirs_[i] + "/cpu.cfs_quota_us", std::to_string(quota));
      }
    }
  }
  if (!error_.empty()) {  // the run fails with this error; the group is not reused
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) rmdir(it->c_str());
    dirs_.clear();
  }
}

RunCgroup::~RunCgroup() {
  if (v2_fd_ >= 0) close(v2_fd_);
  if (dirs_.empty()) return;
  // Back to the pool when empty (the run's processes are gone once its init is reaped).
  bool empty = true;
  for (const auto& d : dirs_) empty &= read_text(d + "/cgroup.procs").empty();
  Pool& pool = Pool::get();
  std::lock_guard<std::mutex> g(pool.mu);
  if (empty && pool.idle.size() < 256) {
    pool.idle.push_back(std::move(dirs_));
  } else {
    for (auto it = dirs_.rbegin(); it != dirs_.rend(); ++it) rmdir(it->c_str());
  }
}

bool RunCgroup::add(pid_t pid) {
  for (const auto& dir : dirs_)
    if (!write_text(dir + "/cgroup.procs", std::to_string(pid))) {
      error_ = "cannot move the run into " + dir + ": " + std::strerror(errno);
      return false;
    }
  return true;
}

int64_t RunCgroup::peak_memory_kb() const {
  if (dirs_.empty() || !peak_reset_) return 0;
  const char* file = version_ == CgroupSupport::Version::V2 ? "/memory.peak" : "/memory.max_usage_in_bytes";
  return std::atoll(read_text(dirs_[0] + file).c_str()) >> 10;
}

bool RunCgroup::oom_killed() const {
  if (dirs_.empty()) return false;
  const char* file = version_ == CgroupSupport::Version::V2 ? "/memory.events" : "/memory.oom_control";
  return keyed_value(read_text(dirs_[0] + file), "oom_kill") > oom_kills_before_;
}

}  // namespace grpo::sandbox

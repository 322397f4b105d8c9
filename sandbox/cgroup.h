// Control groups per run: one memory limit, process count and CPU share for the whole run, every
// process of it and the shared memory it creates included (rlimits hold per process only).
//
// cgroup v2 when a delegated group is available, as nsjail does: GRPO_SANDBOX_CGROUP names one (a
// cgroup v2 directory with memory and pids in its cgroup.subtree_control and no processes of its
// own), or this process's own group already delegates them. The run's init is started inside its
// group (clone3 CLONE_INTO_CGROUP), which costs next to nothing. GRPO_SANDBOX_CGROUP=v1 uses cgroup
// v1's memory, pids and cpu hierarchies instead (moving init into them costs a few milliseconds
// a run); GRPO_SANDBOX_CGROUP=off, or nothing usable, leaves the rlimits as the only bound.
// `grpo-sandbox probe` says which is in force.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace grpo::sandbox {

struct CgroupSupport {
  enum class Version { None, V1, V2 };
  Version version = Version::None;
  std::string v2_parent;                   // v2: where each run's group is made
  std::string v1_memory, v1_pids, v1_cpu;  // v1: this process's group in each hierarchy ("" = none)
  std::string why_not;                     // none: why
  std::string summary() const;
};

// Probed once. Removes empty groups left by sandbox processes that no longer exist.
const CgroupSupport& cgroup_support();

// One run's group(s), with the limits set on construction. Groups are made once and kept in a
// process-wide pool between runs (making and removing a memory cgroup per run costs more than a
// short run itself); the pool is removed at exit, and groups left by a killed process are
// removed by the next probe.
class RunCgroup {
 public:
  RunCgroup(int64_t memory_mb, int64_t max_processes, double cpus);
  ~RunCgroup();
  RunCgroup(const RunCgroup&) = delete;
  RunCgroup& operator=(const RunCgroup&) = delete;

  bool active() const { return !dirs_.empty(); }
  const std::string& error() const { return error_; }  // why it could not be made ("" when fine or none)
  // v2: the group's directory, for clone3's CLONE_INTO_CGROUP (-1 otherwise).
  int v2_fd() const { return v2_fd_; }
  // v1: moves `pid` (and so everything it starts) into the run's groups.
  bool add(pid_t pid);
  // After the run: the peak memory of the whole run, and whether the kernel killed for memory.
  int64_t peak_memory_kb() const;
  bool oom_killed() const;

 private:
  std::vector<std::string> dirs_;  // v2: one; v1: memory, pids (and cpu)
  CgroupSupport::Version version_ = CgroupSupport::Version::None;
  std::string error_;
  int64_t oom_kills_before_ = 0;
  int v2_fd_ = -1;
  bool peak_reset_ = false;
};

}  // namespace grpo::sandbox

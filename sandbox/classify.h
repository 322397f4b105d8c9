// From what happened to a run to its Result: what the sandbox's init reported about the program
// (or that it reported nothing), and what the supervisor did (killed it at the deadline or at the
// output cap). Pure: the tests reach every branch without running anything.
#pragma once

#include "sandbox/sandbox.h"

namespace grpo::sandbox {

// The sandbox's init writes this to the status pipe when the program ends (or setup fails).
struct InitReport {
  int stage = 0;  // 0 = the program ran; otherwise the setup step that failed (stage_name)
  int err = 0;    // errno of that failure
  int exited = 0, code = -1, sig = 0;
  long cpu_ms = 0, maxrss_kb = 0;
};

// What the supervisor saw and did.
struct Supervision {
  bool killed_at_deadline = false;
  bool killed_at_output_cap = false;
  bool report_received = false;  // a whole InitReport came through the status pipe
  bool memory_killed = false;    // the run's cgroup recorded an out-of-memory kill
};

// The setup step named by InitReport::stage.
const char* stage_name(int stage);

// Fills res.status (and res.error, exit_code, signal, cpu_ms, max_rss_kb) from the report. The
// supervisor's own kills come first; the sandbox's own failures arrive as a setup stage in the
// report (a channel the program never holds), so no exit status of the program can pose as one;
// a SIGXCPU or a SIGKILL at the CPU limit is a timeout; a cgroup out-of-memory kill, memory errors
// in stderr or a peak RSS within 10% of the limit are memory_limit.
void classify(const InitReport& report, const Supervision& supervision, const Limits& limits, double cpu_limit_s,
              Result& res);

}  // namespace grpo::sandbox

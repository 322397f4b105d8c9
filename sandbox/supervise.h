// The supervisor's side of a run: feeds stdin, drains stdout, stderr and the files init sends
// back under their caps, and enforces the wall clock until init has ended, whatever the program
// does with its stdio (closes it, hands it to a child, stops itself). At the deadline or a cap it
// kills init, and with it every process of the run. Returns with init reaped.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

#include "sandbox/classify.h"
#include "sandbox/fd.h"

namespace grpo::sandbox {

struct RunPipes {
  Fd stdin_w, out_r, err_r, files_r;
};

Supervision supervise(pid_t init, RunPipes pipes, const std::string& stdin_data, const Limits& limits,
                      size_t max_files_bytes, std::chrono::steady_clock::time_point t0, Result& res,
                      std::string& files_bytes);

}  // namespace grpo::sandbox

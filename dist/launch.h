// `grpo launch`: starts the local ranks of a distributed job and supervises them, as torchrun does.
// Each rank gets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// GROUP_RANK, MASTER_ADDR, MASTER_PORT), so the same command also runs under torchrun. When a rank
// fails (non-zero exit or a signal), the others are stopped (SIGTERM to each rank's process group,
// SIGKILL after a grace period) and the launcher exits non-zero naming that rank: no survivor is
// left waiting in a collective. SIGINT/SIGTERM to the launcher are passed on to every rank, and a
// rank whose launcher dies is killed by the kernel (PR_SET_PDEATHSIG). Torch-free.
#pragma once

#include <string>
#include <vector>

namespace grpo::dist {

struct LaunchOptions {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  double grace_seconds = 10;  // between SIGTERM and SIGKILL when stopping the other ranks
  std::vector<std::string> command;
};

struct LaunchResult {
  int exit_code = 0;       // 0 when every rank exited 0
  int failed_rank = -1;    // the first rank that failed (global rank), -1 if none
  std::string message;     // what happened, for the user
};

// Throws grpo::Error for invalid options (naming the option).
LaunchResult launch(const LaunchOptions& options);

}  // namespace grpo::dist

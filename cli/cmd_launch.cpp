// `grpo launch`: the local ranks of a distributed job, started and supervised (dist/launch.h).
#include <iostream>

#include "cli/commands.h"
#include "dist/launch.h"

namespace grpo::cli {

int run_launch(const LaunchArgs& a) {
  dist::LaunchOptions o;
  o.nproc_per_node = a.nproc_per_node;
  o.nnodes = a.nnodes;
  o.node_rank = a.node_rank;
  o.master_addr = a.master_addr;
  o.master_port = a.master_port;
  o.grace_seconds = a.grace_seconds;
  o.command = a.command;
  dist::LaunchResult r = dist::launch(o);
  if (r.exit_code != 0) std::cerr << "grpo launch: error: " << r.message << "\n";
  return r.exit_code == 0 ? 0 : (r.exit_code > 0 && r.exit_code < 256 ? r.exit_code : 1);
}

}  // namespace grpo::cli

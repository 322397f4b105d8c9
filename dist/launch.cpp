#include "dist/launch.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "util/error.h"

namespace grpo::dist {

namespace {

std::atomic<int> g_forward_signal{0};
void on_signal(int sig) { g_forward_signal.store(sig); }

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* name = sigdescr_np(WTERMSIG(status));
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + (name ? std::string(" (") + name + ")" : "");
  }
  return "ended with status " + std::to_string(status);
}

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
};

// Forks one rank: its own process group (so that stopping it reaches what it started), killed
// if the launcher dies, torchrun's environment, then exec of the command.
pid_t start(const LaunchOptions& o, int local_rank) {
  const int world = o.nnodes * o.nproc_per_node, rank = o.node_rank * o.nproc_per_node + local_rank;
  pid_t pid = fork();
  if (pid < 0) throw Error(std::string("grpo launch: fork failed: ") + std::strerror(errno));
  if (pid > 0) return pid;
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() == 1) _exit(127);  // the launcher is already gone
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  setenv("RANK", std::to_string(rank).c_str(), 1);
  setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
  setenv("LOCAL_RANK", std::to_string(local_rank).c_str(), 1);
  setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc_per_node).c_str(), 1);
  setenv("GROUP_RANK", std::to_string(o.node_rank).c_str(), 1);
  setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
  setenv("MASTER_PORT", std::to_string(o.master_port).c_str(), 1);
  std::vector<char*> argv;
  for (const auto& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  fprintf(stderr, "grpo launch: rank %d: cannot run '%s': %s\n", rank, argv[0], std::strerror(errno));
  _exit(127);
}

}  // namespace

LaunchResult launch(const LaunchOptions& o) {
  if (o.nproc_per_node < 1) throw Error("grpo launch: --nproc-per-node must be >= 1");
  if (o.nnodes < 1) throw Error("grpo launch: --nnodes must be >= 1");
  if (o.node_rank < 0 || o.node_rank >= o.nnodes)
    throw Error("grpo launch: --node-rank must be in [0, --nnodes), got " + std::to_string(o.node_rank));
  if (o.master_port < 1 || o.master_port > 65535) throw Error("grpo launch: --master-port must be in [1, 65535]");
  if (o.command.empty()) throw Error("grpo launch: no command given (grpo launch [options] -- COMMAND ...)");

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  std::vector<Rank> ranks(o.nproc_per_node);
  for (int i = 0; i < o.nproc_per_node; ++i) {
    ranks[i].rank = o.node_rank * o.nproc_per_node + i;
    ranks[i].pid = start(o, i);
    ranks[i].running = true;
  }
  auto signal_all = [&](int sig) {
    for (auto& r : ranks)
      if (r.running) kill(-r.pid, sig);
  };
  auto running = [&] {
    int n = 0;
    for (auto& r : ranks) n += r.running;
    return n;
  };
  LaunchResult result;
  using Clock = std::chrono::steady_clock;
  Clock::time_point stop_deadline{};
  bool stopping = false, killed = false;
  while (running() > 0) {
    if (int sig = g_forward_signal.exchange(0)) {
      signal_all(sig);  // the user's Ctrl-C or a scheduler's SIGTERM: every rank sees it
      if (!stopping) {
        stopping = true;
        stop_deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.grace_seconds));
        if (result.message.empty()) result.message = std::string("stopped by signal ") + std::to_string(sig);
        if (result.exit_code == 0) result.exit_code = 128 + sig;
      }
    }
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (auto& r : ranks) {
        if (r.pid != pid || !r.running) continue;
        r.running = false;
        kill(-r.pid, SIGKILL);  // whatever the rank left behind in its group
        const bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (failed && result.failed_rank < 0 && !stopping) {
          result.failed_rank = r.rank;
          result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          result.message = "rank " + std::to_string(r.rank) + " (pid " + std::to_string(pid) + ") " + describe(status);
          if (running() > 0) {
            result.message += "; stopping the other ranks";
            signal_all(SIGTERM);
            stopping = true;
            stop_deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.grace_seconds));
          }
        }
      }
      continue;
    }
    if (pid < 0 && errno != EINTR && errno != ECHILD) break;
    if (stopping && !killed && Clock::now() >= stop_deadline) {
      signal_all(SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (result.exit_code == 0 && result.message.empty())
    result.message = std::to_string(o.nproc_per_node) + " rank(s) finished";
  return result;
}

}  // namespace grpo::dist

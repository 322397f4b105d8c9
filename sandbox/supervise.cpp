#include "sandbox/supervise.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

namespace grpo::sandbox {

namespace {

// SIGPIPE blocked in this thread while it writes the program's stdin: a program that exits without
// reading gives EPIPE, never a signal that would kill the caller. Restores the mask on the way out,
// after taking any SIGPIPE the writes left pending.
class NoSigpipe {
 public:
  NoSigpipe() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~NoSigpipe() {
    timespec zero{0, 0};
    while (sigtimedwait(&pipe_, nullptr, &zero) == SIGPIPE) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  sigset_t pipe_, old_;
};

}  // namespace

Supervision supervise(pid_t init, RunPipes pipes, const std::string& stdin_data, const Limits& L,
                      size_t max_files_bytes, std::chrono::steady_clock::time_point t0, Result& res,
                      std::string& files_bytes) {
  NoSigpipe no_sigpipe;
  Supervision sv;
  Fd& stdin_w = pipes.stdin_w;
  fcntl(stdin_w.get(), F_SETFL, O_NONBLOCK);
  size_t in_off = 0;
  if (stdin_data.empty()) stdin_w.reset();
  // init's end: a pidfd where the kernel has them (5.3+), else a short poll and WNOHANG.
  Fd pidfd((int)syscall(SYS_pidfd_open, init, 0));
  bool reaped = false;
  auto reap = [&](int flags) {
    if (reaped) return;
    int st = 0;
    pid_t r;
    while ((r = waitpid(init, &st, flags)) < 0 && errno == EINTR) {
    }
    if (r == init || (r < 0 && errno == ECHILD)) reaped = true;
  };
  Fd* reads[3] = {&pipes.out_r, &pipes.err_r, &pipes.files_r};
  std::string* bufs[3] = {&res.out, &res.err, &files_bytes};
  const size_t caps[3] = {L.max_output_bytes, L.max_output_bytes, max_files_bytes};
  const auto deadline = t0 + std::chrono::microseconds((int64_t)(L.timeout_s * 1e6));
  std::chrono::steady_clock::time_point killed_at{};
  auto kill_once = [&](bool& why) {
    if (!sv.killed_at_deadline && !sv.killed_at_output_cap && !reaped) {
      why = true;
      kill(init, SIGKILL);
      killed_at = std::chrono::steady_clock::now();
    }
  };
  auto any_open = [&] { return pipes.out_r.valid() || pipes.err_r.valid() || pipes.files_r.valid(); };
  while (!reaped || any_open()) {
    pollfd fds[5];
    int nf = 0, idx[5];
    for (int k = 0; k < 3; ++k)
      if (reads[k]->valid()) {
        fds[nf] = {reads[k]->get(), POLLIN, 0};
        idx[nf++] = k;
      }
    if (stdin_w.valid()) {
      fds[nf] = {stdin_w.get(), POLLOUT, 0};
      idx[nf++] = 3;
    }
    if (!reaped && pidfd.valid()) {
      fds[nf] = {pidfd.get(), POLLIN, 0};
      idx[nf++] = 4;
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) kill_once(sv.killed_at_deadline);
    // Once init is gone every writer is gone too; a pipe still open long after is not waited for.
    if (reaped && killed_at != std::chrono::steady_clock::time_point{} && now - killed_at > std::chrono::seconds(5))
      break;
    int64_t wait_ms = sv.killed_at_deadline || sv.killed_at_output_cap
                          ? 100
                          : std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1);
    if (!pidfd.valid() && !reaped) wait_ms = std::min<int64_t>(wait_ms, 20);
    int r = poll(fds, nf, (int)wait_ms);
    if (r < 0 && errno != EINTR) break;
    if (!pidfd.valid()) reap(WNOHANG);
    for (int i = 0; i < nf && r > 0; ++i) {
      if (!fds[i].revents) continue;
      if (idx[i] == 4) {
        reap(0);
        continue;
      }
      if (idx[i] == 3) {
        ssize_t n = write(stdin_w.get(), stdin_data.data() + in_off, stdin_data.size() - in_off);
        if (n > 0) in_off += n;
        if (n < 0 && errno != EAGAIN) in_off = stdin_data.size();  // EPIPE: the program stopped reading
        if (in_off >= stdin_data.size()) stdin_w.reset();
        continue;
      }
      int k = idx[i];
      char buf[65536];
      ssize_t n = read(reads[k]->get(), buf, sizeof buf);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        reads[k]->reset();
        continue;
      }
      size_t room = caps[k] > bufs[k]->size() ? caps[k] - bufs[k]->size() : 0;
      bufs[k]->append(buf, std::min<size_t>(room, n));
      if ((size_t)n > room) kill_once(sv.killed_at_output_cap);
    }
  }
  if (!reaped) {
    kill(init, SIGKILL);
    reap(0);
  }
  return sv;
}

}  // namespace grpo::sandbox

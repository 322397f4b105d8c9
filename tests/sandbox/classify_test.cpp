// The sandbox's verdicts from what init reported and what the supervisor did, branch by branch.
#include <gtest/gtest.h>
#include <signal.h>

#include "sandbox/classify.h"

using namespace grpo::sandbox;

namespace {
Result verdict(const InitReport& report, Supervision sv, const std::string& err = "", double cpu_limit_s = 10) {
  Result r;
  r.err = err;
  classify(report, sv, Limits{}, cpu_limit_s, r);
  return r;
}
InitReport exited(int code) {
  InitReport m;
  m.exited = 1;
  m.code = code;
  return m;
}
InitReport signalled(int sig, long cpu_ms = 5) {
  InitReport m;
  m.sig = sig;
  m.cpu_ms = cpu_ms;
  return m;
}
const Supervision kReported{false, false, true};
}  // namespace

TEST(Classify, SupervisorKillsComeFirst) {
  EXPECT_EQ(verdict(exited(0), {true, false, true}).status, Status::Timeout);
  EXPECT_EQ(verdict(exited(0), {false, true, true}).status, Status::OutputLimit);
  EXPECT_EQ(verdict(InitReport{}, {true, false, false}).status, Status::Timeout);  // no report needed
}

TEST(Classify, MissingOrFailedSetupIsASandboxErrorNamingTheStep) {
  Result r = verdict(InitReport{}, {false, false, false});
  EXPECT_EQ(r.status, Status::SandboxError);
  EXPECT_NE(r.error.find("without a report"), std::string::npos);
  InitReport failed;
  failed.stage = 13;
  failed.err = EPERM;
  r = verdict(failed, kReported);
  EXPECT_EQ(r.status, Status::SandboxError);
  EXPECT_NE(r.error.find("pivot_root"), std::string::npos) << r.error;
  failed.stage = 24;
  r = verdict(failed, kReported);
  EXPECT_EQ(r.status, Status::SandboxError);
  EXPECT_NE(r.error.find("seccomp filter"), std::string::npos) << r.error;
  // The program's own exit status is never the sandbox's failure, whatever its value.
  for (int code : {120, 121, 122, 123, 124, 125, 126, 127}) EXPECT_EQ(verdict(exited(code), kReported).status, Status::RuntimeError);
}

TEST(Classify, TheProgramsOwnEnd) {
  Result ok = verdict(exited(0), kReported);
  EXPECT_EQ(ok.status, Status::Ok);
  EXPECT_EQ(ok.exit_code, 0);
  EXPECT_EQ(verdict(exited(1), kReported).status, Status::RuntimeError);
  EXPECT_EQ(verdict(signalled(SIGSEGV), kReported).status, Status::RuntimeError);
  EXPECT_EQ(verdict(signalled(SIGXCPU), kReported).status, Status::Timeout);
  EXPECT_EQ(verdict(signalled(SIGKILL, /*cpu_ms=*/9990), kReported).status, Status::Timeout);  // at the CPU limit
  EXPECT_EQ(verdict(signalled(SIGKILL, /*cpu_ms=*/100), kReported).status, Status::RuntimeError);
  EXPECT_EQ(verdict(exited(1), kReported, "Traceback...\nMemoryError\n").status, Status::MemoryLimit);
  Supervision oom = kReported;
  oom.memory_killed = true;
  EXPECT_EQ(verdict(signalled(SIGKILL), oom).status, Status::MemoryLimit);  // the run's cgroup killed it
  EXPECT_EQ(verdict(exited(1), oom).status, Status::MemoryLimit);           // or one of its processes
  EXPECT_EQ(verdict(exited(0), oom).status, Status::Ok);                    // and the program coped
  InitReport big = exited(1);
  big.maxrss_kb = (Limits{}.memory_mb << 10) * 95 / 100;
  EXPECT_EQ(verdict(big, kReported).status, Status::MemoryLimit);
}

// The sandbox's seccomp-bpf programs, compiled once in the parent (libseccomp allocates; the
// child of clone must not).
//
// The program's filter is an allow-list: the system calls that Python 3, g++ (cc1plus, as, ld)
// and the programs they build use, with arguments checked where a call has a dangerous mode
// (sockets other than AF_UNIX, clone with namespace flags, prlimit64 that sets, ioctl TIOCSTI).
// Everything else fails with ENOSYS, which libc treats as "not supported here" and falls back
// from. Other architectures' system calls (int 0x80) kill the process.
//
// The sandbox's init gets a filter of its own, narrower still: it only waits, reads and writes
// pipes and the workspace, and exits; anything else kills it (and with it the run).
#pragma once

#include <linux/filter.h>

#include <string>
#include <vector>

namespace grpo::sandbox {

struct BpfProgram {
  std::vector<sock_filter> code;
  std::string error;  // empty when compiled
};

const BpfProgram& program_filter();
const BpfProgram& init_filter();

// The system calls the program's filter allows, some under conditions (`grpo-sandbox probe --verbose`).
const std::vector<std::string>& allowed_syscalls();

}  // namespace grpo::sandbox

// File descriptors that close themselves: a run that returns early (a failed clone, a failed
// mmap) leaks none.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <utility>

namespace grpo::sandbox {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A close-on-exec pipe; ok() is false (and errno set) when pipe2 failed.
struct Pipe {
  Fd read, write;
  static Pipe make() {
    int p[2];
    Pipe out;
    if (::pipe2(p, O_CLOEXEC) == 0) {
      out.read = Fd(p[0]);
      out.write = Fd(p[1]);
    }
    return out;
  }
  bool ok() const { return read.valid() && write.valid(); }
};

}  // namespace grpo::sandbox

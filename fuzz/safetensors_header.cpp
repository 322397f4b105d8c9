// Fuzz target: a safetensors file (8-byte header length, JSON header, data) as SafetensorsFile::open
// reads it from disk. Every input must be accepted or refused with grpo::Error, never crash, hang or leak.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "io/safetensors.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int fd = memfd_create("safetensors", 0);
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) return 0;
  try {
    auto f = grpo::io::SafetensorsFile::open("/proc/self/fd/" + std::to_string(fd));
    for (const auto& t : f->tensors()) {
      volatile uint8_t sink = t.nbytes ? t.data[t.nbytes - 1] : 0;  // the whole extent must be mapped
      (void)sink;
      f->get(t.name);
    }
  } catch (const grpo::Error&) {
  }
  return 0;
}

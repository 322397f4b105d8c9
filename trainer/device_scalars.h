// Values computed on the device during an update and read back together: one host
// synchronisation for all of them, instead of one per `.item()` (each stalls the stream until the
// host has queued the next kernels).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <vector>

namespace grpo::trainer {

class DeviceScalars {
 public:
  // Queues every element of `t` (any dtype, no gradient needed); returns the index of its first
  // element in read()'s result.
  size_t add(const at::Tensor& t);
  // The queued values as doubles, in the order added (exact for floats and integers below 2^53);
  // empties the queue.
  std::vector<double> read();

 private:
  std::vector<at::Tensor> queued_;
  size_t size_ = 0;
};

}  // namespace grpo::trainer

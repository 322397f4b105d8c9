// Host -> device copies that do not wait for the device. A CUDA copy from pageable memory first
// waits for the work already queued on the stream, so every such copy in the decode loop is a
// synchronisation point that leaves the GPU idle while the host prepares the next launch. A copy
// from pinned memory is queued like a kernel; the caching host allocator keeps the pinned buffer
// until the copy has run.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace grpo::rollout {

// `host` (CPU) copied into `dst`, a tensor of its shape on any device; the host tensor may be
// reused as soon as this returns.
inline void upload_into(const at::Tensor& dst, const at::Tensor& host) {
  if (!dst.is_cuda()) {
    dst.copy_(host);
    return;
  }
  at::Tensor pinned = at::empty(host.sizes(), host.options().pinned_memory(true));
  pinned.copy_(host);
  dst.copy_(pinned, /*non_blocking=*/true);
}

// `host` (CPU) on `device`, as upload_into: a copy on any device, never `host` itself.
inline at::Tensor upload(const at::Tensor& host, at::Device device) {
  if (!device.is_cuda()) return host.to(device, /*non_blocking=*/false, /*copy=*/true);
  at::Tensor out = at::empty(host.sizes(), host.options().device(device));
  upload_into(out, host);
  return out;
}

template <typename T>
at::Tensor upload(const std::vector<T>& values, at::ScalarType dtype, at::Device device) {
  const at::Tensor host =
      at::from_blob(const_cast<T*>(values.data()), {(int64_t)values.size()}, at::TensorOptions().dtype(dtype));
  return upload(host, device);
}

}  // namespace grpo::rollout

// Timing for the kernel benchmarks: seconds per call of f, over enough calls for about a quarter of
// a second after one warm-up call. On CUDA (device = true) the calls are queued ten at a time and
// the device is waited for before each reading, so the figure is device time per call. And the
// device's copy bandwidth, the limit that memory-bound figures are given as a fraction of.
#pragma once

#include <ATen/ATen.h>
#include <torch/cuda.h>

#include <chrono>
#include <cstdint>

namespace grpo::bench {

template <typename F>
double seconds_per_call(F f, bool device) {
  auto now = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  f();
  if (device) torch::cuda::synchronize();
  const int batch = device ? 10 : 1;
  int64_t n = 0;
  const double t0 = now();
  double dt = 0;
  do {
    for (int i = 0; i < batch; ++i) f();
    n += batch;
    if (device) torch::cuda::synchronize();
    dt = now() - t0;
  } while (dt < 0.25);
  return dt / n;
}

// Device copy bandwidth (read + write bytes per second) of a large buffer.
inline double copy_bandwidth(const at::Device& dev) {
  const int64_t bytes = dev.is_cuda() ? (int64_t(1) << 30) : (int64_t(256) << 20);
  auto opts = at::TensorOptions().dtype(at::kByte).device(dev);
  at::Tensor a = at::ones({bytes}, opts), b = at::empty({bytes}, opts);
  return 2.0 * bytes / seconds_per_call([&] { b.copy_(a); }, dev.is_cuda());
}

}  // namespace grpo::bench

#include "trainer/device_scalars.h"

#include <ATen/ops/cat.h>
#include <c10/core/GradMode.h>

namespace grpo::trainer {

size_t DeviceScalars::add(const at::Tensor& t) {
  c10::NoGradGuard g;
  const size_t at = size_;
  queued_.push_back(t.detach().reshape({-1}).to(at::kDouble));
  size_ += (size_t)t.numel();
  return at;
}

std::vector<double> DeviceScalars::read() {
  std::vector<double> out;
  if (queued_.empty()) return out;
  c10::NoGradGuard g;
  at::Tensor all = at::cat(queued_).to(at::kCPU).contiguous();
  out.assign(all.data_ptr<double>(), all.data_ptr<double>() + all.numel());
  queued_.clear();
  size_ = 0;
  return out;
}

}  // namespace grpo::trainer

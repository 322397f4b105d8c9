// How far a tensor is from a reference, for tests that compare kernels within a tolerance.
#pragma once

#include <ATen/ATen.h>

namespace grpo::testing {

// The largest |got - want| over the largest |want| (at least 1e-6), computed in double on the CPU.
inline double max_rel(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor g = got.to(at::kCPU, at::kDouble), w = want.to(at::kCPU, at::kDouble);
  return ((g - w).abs().max() / w.abs().max().clamp_min(1e-6)).item<double>();
}

}  // namespace grpo::testing

// Fused CUDA kernels for training forwards and their backward passes (adopted, model/kernel_trial.h:
// "train_kernels"; measured on an H100 at 1.17-1.19x the ATen step's tokens/s): RMSNorm (forward and backward, one kernel each, where ATen's chain is eight
// kernels forward and a dozen backward, each reading or writing the whole fp32 activation) and the
// backward of SwiGLU (one kernel, where autograd runs three and, for the experts' [gate | up] rows,
// zero-fills and copies the (M, 2I) gradient). On trial, the routed experts' weighted combine and
// the sum of the dispatch's gradient ("gather_combine": one kernel each for the combine, its backward
// and the dispatch's backward, where ATen runs a gather, an fp32 product copy, a cast, an index_add
// with atomics, and the same again backward). SwiGLU's forward is the fused inference kernel, which
// rounds as ATen does. They round where the ATen chains round, so a step agrees with the ATen
// step to rounding (RMSNorm's row sums, and its weight gradient's sum over rows, go in another
// order). The layers call them on CUDA, in every forward outside the rollout
// engine's fused kernels (model/fused_kernels.h): with gradients or without, so that a
// checkpointed layer's recomputation repeats its first pass exactly.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace grpo::model::train {

using at::Tensor;

// x on CUDA, the kernels built, and "train_kernels" not turned off.
bool active(const Tensor& x);

// weight * (x / rms(x), rounded to x's dtype), rounded: RMSNormImpl's forward, differentiable.
// Undefined where the kernels do not apply (dtype, or rows too wide); the caller then runs ATen's.
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);
// silu(gu[..., :I]) * gu[..., I:] for gu (..., 2I), differentiable in gu; undefined where it does not apply.
Tensor swiglu(const Tensor& gu);
// silu(gate) * up, differentiable in both; undefined where it does not apply.
Tensor swiglu(const Tensor& gate, const Tensor& up);

// The routed experts' gathers (model/moe.cpp, on trial: "gather_combine"), not differentiable: the
// CUDA kernels of train_kernels_cuda.h, gather_sum and combine_backward, where they apply (rows (R,
// H) on CUDA, slot int64, weights fp32, k at most 16); undefined otherwise.
Tensor gather_sum(const Tensor& rows, const Tensor& slot, const Tensor& weights, int64_t k);
std::pair<Tensor, Tensor> combine_backward(const Tensor& g, const Tensor& rows, const Tensor& slot,
                                           const Tensor& weights, int64_t k);

}  // namespace grpo::model::train

// The CUDA side of model/train_kernels.h (compiled when the CUDA compiler is found). Inputs on one
// CUDA device, fp32 or bf16 (fp16 too); shapes are checked by model/train_kernels.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

namespace grpo::model::train::cuda {

using at::Tensor;

// RMSNorm over the last dimension as RMSNormImpl's ATen chain computes it: y = w * (x * rstd
// rounded to x's dtype), rounded; rstd = rsqrt(mean(x^2) + eps) per row, fp32, kept for the backward.
std::pair<Tensor, Tensor> rms_norm_forward(const Tensor& x, const Tensor& w, double eps);
// dx (x's shape and dtype) and, if `weight_grad`, dw (w's dtype; its rows' products rounded as
// autograd's, summed in fp32); else an undefined dw. A block keeps dw's row in the 48 KB of shared
// memory it gets by default: rows of at most kMaxNormWidth values.
constexpr int64_t kMaxNormWidth = 11 * 1024;
std::pair<Tensor, Tensor> rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                                            bool weight_grad);

// gu (M, 2I) = [gate | up] (rows may be strided; the last stride 1), dh (M, I): the gradient of
// silu(gate) * up with respect to gu, (M, 2I) contiguous, rounded where autograd's chain rounds.
Tensor swiglu_backward(const Tensor& dh, const Tensor& gu);
// The same for gate and up held apart: (d gate, d up).
std::pair<Tensor, Tensor> swiglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up);

}  // namespace grpo::model::train::cuda

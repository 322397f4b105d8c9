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

// The routed experts' dispatch and combine as gathers. A token's k rows (pairs p = n k + j, j in
// routing order) sit at rows slot[p] (N k int64) of the grouped rows (R, H). At most kMaxTopK a token.
constexpr int64_t kMaxTopK = 16;
// out (N, H) in rows' dtype: out[n] = sum over j of (rows[slot[p]] * weights[p], rounded to the
// dtype), the k terms added in fp32 in j order and rounded once; weights (N k) fp32, or undefined
// for the rows themselves (the dispatch's backward).
Tensor gather_sum(const Tensor& rows, const Tensor& slot, const Tensor& weights, int64_t k);
// The weighted combine's backward for the output's gradient g (N, H): d rows (R, H), row slot[p] =
// g[n] * weights[p] rounded to the dtype (every row a pair's: R = N k), and d weights (N k) fp32,
// sum over the columns of g[n] * rows[slot[p]].
std::pair<Tensor, Tensor> combine_backward(const Tensor& g, const Tensor& rows, const Tensor& slot,
                                           const Tensor& weights, int64_t k);

}  // namespace grpo::model::train::cuda

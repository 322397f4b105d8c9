// The CUDA side of model/train_kernels.h (compiled when the CUDA compiler is found). Inputs on one
// CUDA device, fp32 or bf16 (fp16 too); shapes are checked by model/train_kernels.cpp.
#pragma once

#include <ATen/ATen.h>

#include <array>
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

// MLA's attention inputs ("mla_assemble"): from q (B, T, heads, dn + dr) and kv (B, T, heads,
// dn + dv), both contiguous, and k_pe (B, T, dr; last stride 1), with RoPE tables cos and sin (B, T,
// 1, dr / 2) contiguous: query [q_nope | rope(q_pe)], key [k_nope | rope(k_pe)] (B, T, heads, dn +
// dr) and value (B, T, heads, dv), contiguous, the bits of MLAImpl's ATen chain.
std::array<Tensor, 3> mla_inputs(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& cos,
                                 const Tensor& sin, bool interleave, int64_t dn);
// Their backward from the gradients of query, key and value (any strides over the first three
// dimensions): d q and d kv (contiguous, the chain's bits) and d k_pe (B, T, dr), whose sum over the
// heads goes in fp32 in head order.
std::array<Tensor, 3> mla_inputs_backward(const Tensor& dquery, const Tensor& dkey, const Tensor& dvalue,
                                          const Tensor& cos, const Tensor& sin, bool interleave, int64_t dn);

}  // namespace grpo::model::train::cuda

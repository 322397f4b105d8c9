// Fused CUDA kernels for training forwards and their backward passes (adopted, model/kernel_trial.h:
// "train_kernels"; measured on an H100 at 1.17-1.19x the ATen step's tokens/s): RMSNorm (forward and
// backward, one kernel each, where ATen's chain is eight kernels forward and a dozen backward, each
// reading or writing the whole fp32 activation) and the backward of SwiGLU (one kernel, where
// autograd runs three and, for the experts' [gate | up] rows, zero-fills and copies the (M, 2I)
// gradient). Adopted too (together 1.23-1.26x the step's tokens/s on an H100), the routed experts'
// weighted combine and the sum of the dispatch's gradient ("gather_combine": one kernel each for the
// combine, its backward and the dispatch's backward, where ATen runs a gather, an fp32 product copy,
// a cast, an index_add with atomics, and the same again backward), and MLA's query, key and value
// ("mla_assemble"). SwiGLU's forward is the fused inference kernel, which rounds as ATen does;
// SwiGLU forward and backward go in 16-byte packs where the rows allow ("packed_swiglu", the same
// bits, 1.03x the step on an H100). They round where the ATen chains round, so a step
// agrees with the ATen step to rounding (RMSNorm's row sums, and its weight gradient's sum over
// rows, go in another order). The layers call them on CUDA, in every forward outside the rollout
// engine's fused kernels (model/fused_kernels.h): with gradients or without, so that a
// checkpointed layer's recomputation repeats its first pass exactly.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

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

// The routed experts' gathers (model/moe.cpp, "gather_combine"), not differentiable: the
// CUDA kernels of train_kernels_cuda.h, gather_sum and combine_backward, where they apply (rows (R,
// H) on CUDA, slot int64, weights fp32, k at most 16); undefined otherwise.
Tensor gather_sum(const Tensor& rows, const Tensor& slot, const Tensor& weights, int64_t k);
std::pair<Tensor, Tensor> combine_backward(const Tensor& g, const Tensor& rows, const Tensor& slot,
                                           const Tensor& weights, int64_t k);

// MLA's attention inputs (model/deepseek.cpp, "mla_assemble"), differentiable in q, kv and
// k_pe: from the query projection q (B, T, heads, dn + dr), the key/value up-projection kv (B, T,
// heads, dn + dv) and the keys' shared RoPE part k_pe (B, T, dr), rotated by the tables cos and sin
// (B, T, 1, dr / 2): query = [q_nope | rope(q_pe)] and key = [k_nope | rope(k_pe) for every head]
// (B, T, heads, dn + dr) and value (B, T, heads, dv), contiguous, the bits of MLAImpl's ATen chain,
// in one kernel forward and two backward. Empty where it does not apply.
std::vector<Tensor> mla_inputs(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& cos,
                               const Tensor& sin, bool interleave, int64_t dn);

}  // namespace grpo::model::train

// The policy's linear layer, y = x W^T (+ b), with an optional LoRA adapter in PEFT's form:
//   y = x W^T (+ b) + scaling * lora_B(lora_A(dropout(x))),
// lora_A (r, in) and lora_B (out, r) kept in fp32 whatever the base dtype (the input is cast to
// fp32 for the adapter and the sum rounded back to the base output's dtype, as PEFT does), with
// scaling = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA). Parameter names follow PEFT's
// saved names: `...q_proj.weight`, `...q_proj.lora_A.weight`, `...q_proj.lora_B.weight`.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "model/fp8.h"

namespace grpo::model {

using at::Tensor;

// y + scaling * (x A^T) B^T computed in the adapter's dtype and rounded to y's dtype: the adapter
// side path of LinearImpl and of the routed experts' per-expert loop.
Tensor add_low_rank(const Tensor& y, const Tensor& x, const Tensor& A, const Tensor& B, double scaling);

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = false);
  Tensor forward(const Tensor& x);

  // Adds an adapter of rank r: lora_A drawn as PEFT draws it (kaiming-uniform, bound 1/sqrt(in),
  // from `gen`), lora_B zeros, so that the adapted layer starts equal to the base.
  void add_lora(int64_t r, double scaling, double dropout, at::Generator gen);
  bool has_lora() const { return static_cast<bool>(lora_A); }
  // W + scaling * B A in W's dtype (the merged weight; W itself without an active adapter).
  Tensor effective_weight() const;

  int64_t in_features, out_features;
  Tensor weight, bias;
  torch::nn::Linear lora_A{nullptr}, lora_B{nullptr};
  double lora_scaling = 0, lora_dropout = 0;
  bool lora_enabled = true;  // false: the base layer alone (the reference model under LoRA)
  // The rollout engine's FP8 copy of effective_weight() (model/fp8.h), used inside an fp8::Scope.
  fp8::Weight fp8;
};
TORCH_MODULE(Linear);

}  // namespace grpo::model

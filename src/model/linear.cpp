#include "model/linear.h"

#include <torch/nn/options/linear.h>

#include <cmath>

#include "model/fused_kernels.h"
#include "model/kernel_trial.h"

namespace grpo::model {

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias) : in_features(in), out_features(out) {
  weight = register_parameter("weight", torch::empty({out, in}));
  if (with_bias) bias = register_parameter("bias", torch::zeros({out}));
}

Tensor LinearImpl::forward(const Tensor& x) {
  if (fp8.defined() && fp8::active()) return fp8::linear(x, fp8, bias, x.scalar_type());
  Tensor y;
  // A decode step's few rows through a kernel that reads the weights at the bandwidth (adopted).
  if (fused::active(x) && kernel_adopted("linear_rows")) y = fused::linear_rows(x, weight, bias);
  if (!y.defined()) y = at::linear(x, weight, bias);
  if (!lora_A || !lora_enabled) return y;
  Tensor a = x.to(lora_A->weight.scalar_type());
  if (lora_dropout > 0 && is_training()) a = at::dropout(a, lora_dropout, /*train=*/true);
  return add_low_rank(y, a, lora_A->weight, lora_B->weight, lora_scaling);
}

Tensor add_low_rank(const Tensor& y, const Tensor& x, const Tensor& A, const Tensor& B, double scaling) {
  Tensor delta = at::linear(at::linear(x.to(A.scalar_type()), A), B) * scaling;
  return (y + delta).to(y.scalar_type());
}

void LinearImpl::add_lora(int64_t r, double scaling, double dropout, at::Generator gen) {
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(weight.device());
  lora_A = register_module("lora_A", torch::nn::Linear(torch::nn::LinearOptions(in_features, r).bias(false)));
  lora_B = register_module("lora_B", torch::nn::Linear(torch::nn::LinearOptions(r, out_features).bias(false)));
  at::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  Tensor a = at::empty({r, in_features}, at::TensorOptions().dtype(at::kFloat));
  a.uniform_(-bound, bound, gen);
  lora_A->weight.set_data(a.to(f32));
  lora_B->weight.set_data(at::zeros({out_features, r}, f32));
  lora_scaling = scaling;
  lora_dropout = dropout;
}

Tensor LinearImpl::effective_weight() const {
  if (!lora_A || !lora_enabled) return weight;
  // As PEFT merges: the update rounded to W's dtype, then added.
  return weight + (at::matmul(lora_B->weight, lora_A->weight) * lora_scaling).to(weight.scalar_type());
}

}  // namespace grpo::model

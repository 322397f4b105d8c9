#include "model/train_kernels.h"

#include <torch/csrc/autograd/custom_function.h>

#include "model/kernel_trial.h"
#include "model/layers.h"
#ifdef GRPO_INVARIANT_CUDA
#include "model/invariant_kernels_cuda.h"
#include "model/train_kernels_cuda.h"
#endif

namespace grpo::model::train {

bool active(const Tensor& x) {
#ifdef GRPO_INVARIANT_CUDA
  return x.is_cuda() && kernel_adopted("train_kernels");
#else
  (void)x;
  return false;
#endif
}

#ifdef GRPO_INVARIANT_CUDA

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

bool float_type(const Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, double eps) {
    auto [y, rstd] = cuda::rms_norm_forward(x, weight, eps);
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [dx, dw] = cuda::rms_norm_backward(grads[0], saved[0], saved[1], saved[2], ctx->needs_input_grad(1));
    return {dx.view(saved[0].sizes()), dw, Tensor()};
  }
};

struct SwigluFunction : torch::autograd::Function<SwigluFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& gu) {
    const int64_t I = gu.size(-1) / 2;
    ctx->save_for_backward({gu});
    return invariant::cuda::swiglu(gu.narrow(-1, 0, I), gu.narrow(-1, I, I));
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    return {cuda::swiglu_backward(grads[0], ctx->get_saved_variables()[0])};
  }
};

struct SwigluPairFunction : torch::autograd::Function<SwigluPairFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& gate, const Tensor& up) {
    ctx->save_for_backward({gate, up});
    return invariant::cuda::swiglu(gate, up);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [dgate, dup] = cuda::swiglu_backward(grads[0], saved[0], saved[1]);
    return {dgate, dup};
  }
};

struct MlaInputsFunction : torch::autograd::Function<MlaInputsFunction> {
  static tensor_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& kv, const Tensor& k_pe,
                             const Tensor& cos, const Tensor& sin, bool interleave, int64_t dn) {
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["interleave"] = interleave;
    ctx->saved_data["dn"] = dn;
    auto out = cuda::mla_inputs(q, kv, k_pe, cos, sin, interleave, dn);
    ctx->saved_data["qk_shape"] = out[0].sizes().vec();
    ctx->saved_data["v_shape"] = out[2].sizes().vec();
    return {out[0], out[1], out[2]};
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool interleave = ctx->saved_data["interleave"].toBool();
    const int64_t dn = ctx->saved_data["dn"].toInt();
    for (int i = 0; i < 3; ++i)  // an output the loss did not use
      if (!grads[i].defined())
        grads[i] = at::zeros(ctx->saved_data[i == 2 ? "v_shape" : "qk_shape"].toIntVector(), saved[0].options());
    auto d = cuda::mla_inputs_backward(grads[0], grads[1], grads[2], saved[0], saved[1], interleave, dn);
    return {d[0], d[1], d[2], Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  // Wider rows than the backward's shared memory holds are left to ATen's chain.
  if (!float_type(x) || weight.scalar_type() != x.scalar_type() || weight.dim() != 1 || x.dim() == 0 ||
      weight.size(0) != x.size(-1) || x.size(-1) > cuda::kMaxNormWidth)
    return {};
  return RmsNormFunction::apply(x, weight, eps);
}

Tensor swiglu(const Tensor& gu) {
  if (!float_type(gu) || gu.dim() == 0 || gu.size(-1) % 2 != 0 || gu.stride(-1) != 1) return {};
  return SwigluFunction::apply(gu);
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  if (!float_type(gate) || up.scalar_type() != gate.scalar_type() || gate.sizes() != up.sizes()) return {};
  return SwigluPairFunction::apply(gate, up);
}

namespace {

bool gathers_apply(const Tensor& rows, const Tensor& slot, const Tensor& weights, int64_t k) {
  return active(rows) && float_type(rows) && rows.dim() == 2 && slot.scalar_type() == at::kLong &&
         slot.device() == rows.device() && k >= 1 && k <= cuda::kMaxTopK && slot.numel() % k == 0 &&
         (!weights.defined() || (weights.scalar_type() == at::kFloat && weights.device() == rows.device() &&
                                 weights.numel() == slot.numel()));
}

}  // namespace

Tensor gather_sum(const Tensor& rows, const Tensor& slot, const Tensor& weights, int64_t k) {
  if (!gathers_apply(rows, slot, weights, k)) return {};
  return cuda::gather_sum(rows, slot.reshape({-1}), weights.defined() ? weights.reshape({-1}) : weights, k);
}

std::pair<Tensor, Tensor> combine_backward(const Tensor& g, const Tensor& rows, const Tensor& slot,
                                           const Tensor& weights, int64_t k) {
  if (!weights.defined() || !gathers_apply(rows, slot, weights, k) || g.scalar_type() != rows.scalar_type() ||
      g.dim() != 2 || g.size(1) != rows.size(1) || rows.size(0) != slot.numel())
    return {};
  return cuda::combine_backward(g, rows, slot.reshape({-1}), weights.reshape({-1}), k);
}

std::vector<Tensor> mla_inputs(const Tensor& q, const Tensor& kv, const Tensor& k_pe, const Tensor& cos,
                               const Tensor& sin, bool interleave, int64_t dn) {
  if (!active(q) || !float_type(q) || q.dim() != 4 || kv.dim() != 4 || k_pe.dim() != 3 || !q.is_contiguous() ||
      !kv.is_contiguous() || k_pe.stride(2) != 1)
    return {};
  const int64_t B = q.size(0), T = q.size(1), heads = q.size(2), dr = q.size(3) - dn, dv = kv.size(3) - dn;
  if (dn < 0 || dr <= 0 || dr % 2 != 0 || dv <= 0 || dv > dn + dr || kv.size(0) != B || kv.size(1) != T ||
      kv.size(2) != heads || k_pe.size(0) != B || k_pe.size(1) != T || k_pe.size(2) != dr)
    return {};
  for (const Tensor* t : {&kv, &k_pe})
    if (t->scalar_type() != q.scalar_type() || t->device() != q.device()) return {};
  if (!RopeTables{cos, sin}.fit(q, dr / 2)) return {};
  return MlaInputsFunction::apply(q, kv, k_pe, cos, sin, interleave, dn);
}

#else

Tensor rms_norm(const Tensor&, const Tensor&, double) { return {}; }
Tensor swiglu(const Tensor&) { return {}; }
Tensor swiglu(const Tensor&, const Tensor&) { return {}; }
Tensor gather_sum(const Tensor&, const Tensor&, const Tensor&, int64_t) { return {}; }
std::pair<Tensor, Tensor> combine_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t) {
  return {};
}
std::vector<Tensor> mla_inputs(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, int64_t) {
  return {};
}

#endif

}  // namespace grpo::model::train

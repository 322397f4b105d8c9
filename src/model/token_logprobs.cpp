#include "model/token_logprobs.h"

#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

namespace grpo::model {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

Tensor chunk_logits(const Tensor& h, const Tensor& weight) { return at::linear(h, weight).to(at::kFloat); }

struct TokenLogprobs : torch::autograd::Function<TokenLogprobs> {
  // -> {log-probs (M), entropy (M; empty unless asked)}; saves h, W, the targets and each row's logsumexp.
  static tensor_list forward(AutogradContext* ctx, const Tensor& h, const Tensor& weight, const Tensor& targets,
                             int64_t chunk, bool want_entropy) {
    const int64_t M = h.size(0);
    Tensor lp = at::empty({M}, h.options().dtype(at::kFloat)), lse = at::empty_like(lp);
    Tensor entropy = want_entropy ? at::empty_like(lp) : at::empty({0}, lp.options());
    for (int64_t s = 0; s < M; s += chunk) {
      const int64_t n = std::min(chunk, M - s);
      const Tensor lg = chunk_logits(h.narrow(0, s, n), weight);
      const Tensor l = lg.logsumexp(-1);
      lse.narrow(0, s, n).copy_(l);
      lp.narrow(0, s, n).copy_(lg.gather(1, targets.narrow(0, s, n).unsqueeze(1)).squeeze(1) - l);
      if (want_entropy) entropy.narrow(0, s, n).copy_(l - (lg.softmax(-1) * lg).sum(-1));  // logsumexp - E[logits]
    }
    ctx->save_for_backward({h, weight, targets, lse});
    ctx->saved_data["chunk"] = chunk;
    ctx->mark_non_differentiable({entropy});
    return {lp, entropy};
  }

  // d lp / d logits = onehot(target) - softmax: per chunk, the logits again, then the two products.
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &h = saved[0], &weight = saved[1], &targets = saved[2], &lse = saved[3];
    const int64_t chunk = ctx->saved_data["chunk"].toInt(), M = h.size(0);
    const Tensor g = grads[0].defined() ? grads[0] : at::zeros_like(lse);
    const bool want_h = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    Tensor dh = want_h ? at::empty_like(h) : Tensor();
    Tensor dw = want_w ? at::zeros(weight.sizes(), weight.options().dtype(at::kFloat)) : Tensor();
    for (int64_t s = 0; s < M; s += chunk) {
      const int64_t n = std::min(chunk, M - s);
      const Tensor hc = h.narrow(0, s, n), gc = g.narrow(0, s, n).unsqueeze(1);
      Tensor dlg = (chunk_logits(hc, weight) - lse.narrow(0, s, n).unsqueeze(1)).exp_().mul_(-gc);
      dlg.scatter_add_(1, targets.narrow(0, s, n).unsqueeze(1), gc);
      const Tensor d = dlg.to(weight.scalar_type());
      if (want_h) dh.narrow(0, s, n).copy_(at::mm(d, weight));
      if (want_w) dw.add_(at::mm(d.t(), hc.to(weight.scalar_type())));
    }
    return {dh, want_w ? dw.to(weight.scalar_type()) : Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

Tensor token_logprobs(const Tensor& h, const Tensor& weight, const Tensor& targets, Tensor* entropy,
                      int64_t rows_per_chunk) {
  const int64_t V = weight.size(0);
  const int64_t chunk = rows_per_chunk > 0 ? rows_per_chunk : std::max<int64_t>(1, (int64_t(1) << 27) / (4 * V));
  auto out = TokenLogprobs::apply(h, weight, targets, chunk, entropy != nullptr);
  if (entropy) *entropy = out[1];
  return out[0];
}

}  // namespace grpo::model

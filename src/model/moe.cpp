#include "model/moe.h"

#include <ATen/ops/_grouped_mm.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "model/fused_kernels.h"
#include "model/kernel_trial.h"
#include "model/train_kernels.h"
#include "util/error.h"

namespace grpo::model {

RouterImpl::RouterImpl(const ModelConfig& c) : config(c) {
  weight = register_parameter("weight", torch::empty({c.n_routed_experts, c.hidden_size}));
  if (c.topk_method == TopkMethod::NoauxTc)
    e_score_correction_bias = register_buffer("e_score_correction_bias", torch::zeros({c.n_routed_experts}));
}

RouterImpl::Routing RouterImpl::forward(const Tensor& x, const Tensor& replay) {
  const ModelConfig& c = config;
  const int64_t N = x.size(0), k = c.num_experts_per_tok;
  // Gate logits in fp32 whatever the model dtype.
  Tensor logits = at::linear(x.to(at::kFloat), weight.to(at::kFloat));
  if (!replay.defined() && fused::active(logits) && kernel_adopted("router"))
    if (fused::Routing r = fused::route(logits, e_score_correction_bias, c); r.experts.defined())
      return {r.experts, r.weights, r.scores, Tensor()};
  Tensor scores = c.scoring_func == ScoringFunc::Softmax ? logits.softmax(-1) : logits.sigmoid();
  Tensor idx = top_experts(scores);
  Tensor own;
  if (replay.defined()) {
    if (replay.dim() != 2 || replay.size(0) != N || replay.size(1) != k)
      throw Error("routing replay: expected (" + std::to_string(N) + ", " + std::to_string(k) + ") expert indices, got " +
                  std::to_string(replay.dim()) + "-d of " + std::to_string(replay.numel()));
    own = idx;
    idx = replay.to(idx.device(), at::kLong);
  }
  Tensor w = scores.gather(1, idx);
  if (c.norm_topk_prob) w = w / (w.sum(-1, true) + 1e-20);
  w = w * c.routed_scaling_factor;
  return {idx, w, scores, own};
}

Tensor RouterImpl::top_experts(const Tensor& scores) const {
  const ModelConfig& c = config;
  const int64_t N = scores.size(0), E = c.n_routed_experts;
  Tensor choice = c.topk_method == TopkMethod::NoauxTc ? scores + e_score_correction_bias : scores;
  if (c.topk_method != TopkMethod::Greedy && c.n_group > 1) {
    Tensor grouped = choice.view({N, c.n_group, E / c.n_group});
    // A group's score: its best expert (V2) or the sum of its best two (V3, noaux_tc).
    Tensor group_scores = c.topk_method == TopkMethod::NoauxTc
                              ? std::get<0>(grouped.topk(2, -1)).sum(-1)
                              : std::get<0>(grouped.max(-1));
    Tensor group_idx = std::get<1>(group_scores.topk(c.topk_group, -1, true, false));
    Tensor group_mask = at::zeros_like(group_scores, at::kBool).scatter_(1, group_idx, true);
    Tensor expert_mask = group_mask.unsqueeze(-1).expand({N, c.n_group, E / c.n_group}).reshape({N, E});
    choice = choice.masked_fill(expert_mask.logical_not(), -std::numeric_limits<float>::infinity());
  }
  return std::get<1>(choice.topk(c.num_experts_per_tok, -1, true, false));
}

// ---------------------------------------------------------------------------------------------
RoutedExpertsImpl::RoutedExpertsImpl(int64_t E, int64_t H, int64_t I) : num_experts(E), intermediate(I) {
  gate_up_proj = register_parameter("gate_up_proj", torch::empty({E, 2 * I, H}));
  down_proj = register_parameter("down_proj", torch::empty({E, H, I}));
}

void RoutedExpertsImpl::add_lora(int64_t r_gu, double s_gu, int64_t r_down, double s_down, at::Generator gen) {
  at::NoGradGuard no_grad;
  const int64_t E = num_experts, H = gate_up_proj.size(2), I = intermediate;
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  // PEFT's init: A kaiming-uniform (bound 1/sqrt(in)), B zeros.
  auto draw = [&](int64_t rows, int64_t in) {
    Tensor a = at::empty({E, rows, in}, f32);
    a.uniform_(-1.0 / std::sqrt((double)in), 1.0 / std::sqrt((double)in), gen);
    return a.to(gate_up_proj.device());
  };
  if (r_gu > 0) {
    gate_up_lora_A = register_parameter("gate_up_lora_A", draw(r_gu, H));
    gate_up_lora_B = register_parameter("gate_up_lora_B", at::zeros({E, 2 * I, r_gu}, f32.device(gate_up_proj.device())));
    gate_up_lora_scaling = s_gu;
  }
  if (r_down > 0) {
    down_lora_A = register_parameter("down_lora_A", draw(r_down, I));
    down_lora_B = register_parameter("down_lora_B", at::zeros({E, H, r_down}, f32.device(gate_up_proj.device())));
    down_lora_scaling = s_down;
  }
}

Tensor RoutedExpertsImpl::effective_gate_up() const {
  if (!gate_up_lora_A.defined() || !lora_enabled) return gate_up_proj;
  return gate_up_proj + (at::bmm(gate_up_lora_B, gate_up_lora_A) * gate_up_lora_scaling).to(gate_up_proj.scalar_type());
}

Tensor RoutedExpertsImpl::effective_down() const {
  if (!down_lora_A.defined() || !lora_enabled) return down_proj;
  return down_proj + (at::bmm(down_lora_B, down_lora_A) * down_lora_scaling).to(down_proj.scalar_type());
}

// gu (n, 2I): gate columns then up columns -> silu(gate) * up, (n, I).
Tensor RoutedExpertsImpl::swiglu(const Tensor& gu) const {
  if (fused::active(gu))
    if (Tensor h = fused::swiglu(gu.narrow(-1, 0, intermediate), gu.narrow(-1, intermediate, intermediate)); h.defined())
      return h;
  if (train::active(gu))
    if (Tensor h = train::swiglu(gu); h.defined()) return h;
  return at::silu(gu.narrow(-1, 0, intermediate)) * gu.narrow(-1, intermediate, intermediate);
}

bool RoutedExpertsImpl::use_grouped_mm(const Tensor& x) const {
  static const bool forced_loop = std::getenv("GRPO_MOE_LOOP") != nullptr;
  return !forced_loop && x.is_cuda() && x.scalar_type() == at::kBFloat16;
}

Tensor RoutedExpertsImpl::count(const Tensor& experts, int64_t E) {
  // index_add rather than bincount, which reads the largest id back to the host.
  Tensor ids = experts.reshape({-1});
  return at::zeros({E}, ids.options()).index_add_(0, ids, at::ones_like(ids));
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The token-expert pairs p = n*k + j sit at position slot[p] of the grouped order (order[slot[p]]
// = p), token[i] = order[i] / k. Both moves below are gathers, forward and backward: no atomic
// adds (index_add's are in the rows' dtype, in no fixed order); a token's k rows are summed in
// fp32 in routing order and rounded once (on CUDA one kernel each, model/train_kernels.h; else
// ATen's sum over them, which adds bf16 in fp32 and rounds once).

// x (N, H) -> its rows in the grouped order (N*k, H); backward: each token's k gradient rows summed.
struct DispatchRows : torch::autograd::Function<DispatchRows> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& token, const Tensor& slot, int64_t k) {
    ctx->save_for_backward({slot});
    ctx->saved_data["k"] = k;
    return x.index_select(0, token);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const Tensor slot = ctx->get_saved_variables()[0];
    const int64_t k = ctx->saved_data["k"].toInt(), H = grads[0].size(1);
    Tensor dx = train::gather_sum(grads[0], slot, Tensor(), k);
    if (!dx.defined()) dx = grads[0].index_select(0, slot).view({slot.size(0) / k, k, H}).sum(1);
    return {dx, Tensor(), Tensor(), Tensor()};
  }
};

// ys (N*k, H) in the grouped order and the routing weights (N, k) fp32 -> out (N, H), out[n] = sum
// over j of ys[slot[n*k + j]] * weights[n, j], each product rounded to ys' dtype; backward: each
// row the gradient of its token times its weight, and each weight's gradient the row's dot product
// with its token's gradient (fp32).
struct CombineRows : torch::autograd::Function<CombineRows> {
  static Tensor forward(AutogradContext* ctx, const Tensor& ys, const Tensor& weights, const Tensor& slot, int64_t k) {
    ctx->save_for_backward({ys, weights, slot});
    ctx->saved_data["k"] = k;
    if (Tensor out = train::gather_sum(ys, slot, weights, k); out.defined()) return out;
    const Tensor products = (ys.index_select(0, slot) * weights.reshape({-1, 1})).to(ys.scalar_type());
    return products.view({ys.size(0) / k, k, ys.size(1)}).sum(1);
  }
  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &ys = saved[0], &weights = saved[1], &slot = saved[2];
    const int64_t k = ctx->saved_data["k"].toInt(), R = ys.size(0), H = ys.size(1);
    auto [dys, dw] = train::combine_backward(grads[0], ys, slot, weights, k);
    if (!dys.defined()) {
      const Tensor g = grads[0].unsqueeze(1).expand({R / k, k, H}).reshape({R, H}).to(at::kFloat);  // pair order
      dys = at::empty_like(ys).index_copy_(0, slot, (g * weights.reshape({-1, 1})).to(ys.scalar_type()));
      dw = (g * ys.index_select(0, slot).to(at::kFloat)).sum(1);
    }
    return {dys, ctx->needs_input_grad(1) ? dw.view(weights.sizes()).to(weights.scalar_type()) : Tensor(), Tensor(),
            Tensor()};
  }
};

}  // namespace

Tensor RoutedExpertsImpl::forward(const Tensor& x, const Tensor& experts, const Tensor& weights,
                                  const Tensor& counts_in) {
  Tensor counts = counts_in.defined() ? counts_in : count(experts, num_experts);
  const int64_t N = x.size(0), k = experts.size(1), H = x.size(1);
  Tensor flat = experts.reshape({-1});  // (N*k)
  Tensor order = std::get<1>(flat.sort(/*stable=*/true, 0, false));
  Tensor token = at::div(order, k, "floor");
  if (kernel_adopted("gather_combine")) {  // the dispatch and the combine as gathers (see DispatchRows)
    Tensor slot = at::empty_like(order).scatter_(0, order, at::arange(N * k, order.options()));
    Tensor ys = products(DispatchRows::apply(x, token, slot, k), counts, Tensor());  // (N*k, H), grouped by expert
    return CombineRows::apply(ys, weights, slot, k);
  }
  Tensor ys = products(x.index_select(0, token), counts, Tensor());  // (N*k, H), grouped by expert
  Tensor ws = weights.reshape({-1}).index_select(0, order).unsqueeze(1);  // fp32
  ys = (ys * ws).to(x.scalar_type());
  return at::zeros({N, H}, x.options()).index_add(0, token, ys);
}

// Token-expert pairs up to which the experts' tiles (on trial) take a step's products: a decode step's
// (tens of rows an expert); a prefill's hundreds or thousands an expert take the grouped GEMM.
constexpr int64_t kTileRowsMost = 4096;

Tensor RoutedExpertsImpl::products(const Tensor& xs, const Tensor& counts, const Tensor& ends_in, bool few_rows) const {
  // Adapters act as a low-rank side path, x W^T + scaling (x A^T) B^T, never as a formed W + B A:
  // forming it would write a second copy of every expert weight per forward (and keep one per
  // captured CUDA graph). The grouped path runs the side path as grouped GEMMs in bf16 when the
  // rank meets their 16-byte alignment, and forms the weight otherwise.
  const bool lora_gu = gate_up_lora_A.defined() && lora_enabled, lora_down = down_lora_A.defined() && lora_enabled;
  if (fp8_gate_up.defined() && fp8::active()) {
    // The FP8 copies hold the adapters merged.
    return fp8::grouped(swiglu(fp8::grouped(xs, fp8_gate_up, counts)), fp8_down, counts);
  }
  if (use_grouped_mm(xs)) {
    // One grouped GEMM over all experts (CUDA, bf16): no host sync, no per-expert launches.
    Tensor offsets = ends_in.defined() ? ends_in : counts.cumsum(0).to(at::kInt);
    // A decode step's few rows an expert, each expert's weights read once at the bandwidth (adopted).
    if (few_rows && !lora_gu && !lora_down && fused::active(xs) && kernel_adopted("linear_rows"))
      if (Tensor gu = fused::grouped_rows(xs, gate_up_proj, offsets); gu.defined())
        if (Tensor y = fused::grouped_rows(swiglu(gu), down_proj, offsets); y.defined()) return y;
    // A decode step's tens of rows an expert, in tiles whose weights stream through a pipeline (on trial).
    if (!few_rows && !lora_gu && !lora_down && fused::active(xs) && xs.size(0) <= kTileRowsMost &&
        kernel_on_trial("expert_tiles"))
      if (Tensor gu = fused::grouped_tiles(xs, gate_up_proj, offsets); gu.defined())
        if (Tensor y = fused::grouped_tiles(swiglu(gu), down_proj, offsets); y.defined()) return y;
    auto aligned = [](const Tensor& a) { return !a.defined() || a.size(1) % 8 == 0; };
    const bool side = aligned(gate_up_lora_A) && aligned(down_lora_A);
    auto product = [&](const Tensor& in, const Tensor& w, bool lora, const Tensor& A, const Tensor& B, double s,
                       const Tensor& formed) {
      if (lora && !side) return at::_grouped_mm(in, formed.transpose(1, 2), offsets);
      Tensor y = at::_grouped_mm(in, w.transpose(1, 2), offsets);
      if (!lora) return y;
      Tensor a = at::_grouped_mm(in, A.to(in.scalar_type()).transpose(1, 2), offsets);
      return y + at::_grouped_mm(a, B.to(in.scalar_type()).transpose(1, 2), offsets) * s;
    };
    Tensor gu = product(xs, gate_up_proj, lora_gu, gate_up_lora_A, gate_up_lora_B, gate_up_lora_scaling,
                        lora_gu && !side ? effective_gate_up() : Tensor());  // (N*k, 2I)
    return product(swiglu(gu), down_proj, lora_down, down_lora_A, down_lora_B, down_lora_scaling,
                   lora_down && !side ? effective_down() : Tensor());  // (N*k, H)
  }
  // One matmul per expert over its contiguous block. unbind() (not indexing) so that backward
  // assembles each weight gradient once instead of once per expert. Adapters in fp32, as LinearImpl.
  Tensor cpu_counts = counts.to(at::kCPU);  // one host sync per layer
  const int64_t* cnt = cpu_counts.data_ptr<int64_t>();
  std::vector<Tensor> w_gu = gate_up_proj.unbind(0), w_down = down_proj.unbind(0);
  std::vector<Tensor> a_gu, b_gu, a_down, b_down;
  if (lora_gu) a_gu = gate_up_lora_A.unbind(0), b_gu = gate_up_lora_B.unbind(0);
  if (lora_down) a_down = down_lora_A.unbind(0), b_down = down_lora_B.unbind(0);
  std::vector<Tensor> outs;
  int64_t offset = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    if (cnt[e] == 0) continue;
    Tensor xe = xs.narrow(0, offset, cnt[e]);
    Tensor gu = at::matmul(xe, w_gu[e].t());  // (n_e, 2I)
    if (lora_gu) gu = add_low_rank(gu, xe, a_gu[e], b_gu[e], gate_up_lora_scaling);
    Tensor h = swiglu(gu);
    Tensor y = at::matmul(h, w_down[e].t());  // (n_e, H)
    if (lora_down) y = add_low_rank(y, h, a_down[e], b_down[e], down_lora_scaling);
    outs.push_back(y);
    offset += cnt[e];
  }
  return at::cat(outs, 0);
}

// ---------------------------------------------------------------------------------------------
MoEImpl::MoEImpl(const ModelConfig& c) {
  gate = register_module("gate", Router(c));
  experts = register_module("experts", RoutedExperts(c.n_routed_experts, c.hidden_size, c.moe_intermediate_size));
  if (c.n_shared_experts > 0)
    shared_experts =
        register_module("shared_experts", MLP(c.hidden_size, c.moe_intermediate_size * c.n_shared_experts));
}

Tensor MoEImpl::forward(const Tensor& x, RouterImpl::Routing* routing_out, const Tensor& replay) {
  Tensor flat = x.reshape({-1, x.size(-1)});
  auto routing = gate(flat, replay);
  if (routing_out) *routing_out = routing;
  if (fused::active(flat) && experts->use_grouped_mm(flat)) {
    // Inference on CUDA: the grouping and the weighted sum (with the shared experts) one kernel each.
    fused::ExpertGroups groups = fused::group_by_expert(routing.experts, experts->num_experts);
    Tensor ys = experts->products(flat.index_select(0, groups.token), groups.counts, groups.ends,
                                  /*few_rows=*/flat.size(0) <= 8);
    Tensor shared = shared_experts ? shared_experts(x).reshape(flat.sizes()) : Tensor();
    return fused::combine_experts(ys, groups, routing.weights, shared).view(x.sizes());
  }
  Tensor load;  // tokens per expert (E)
  {
    at::NoGradGuard no_grad;
    load = RoutedExpertsImpl::count(routing.experts, experts->num_experts);
  }
  Tensor out = experts(flat, routing.experts, routing.weights, load).view(x.sizes());
  if (shared_experts) out = out + shared_experts(x);
  return out;
}

}  // namespace grpo::model

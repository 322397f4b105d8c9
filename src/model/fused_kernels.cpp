#include "model/fused_kernels.h"

#include <ATen/core/grad_mode.h>

#include <cstdint>
#include <initializer_list>

#include "model/kernel_trial.h"
#include "model/layers.h"
#include "util/error.h"

#ifdef GRPO_INVARIANT_CUDA
#include "model/fused_kernels_cuda.h"
#include "model/invariant_kernels_cuda.h"
#endif

namespace grpo::model::fused {

namespace {
bool float_type(const Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kBFloat16 || s == at::kHalf;
}
bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }
}  // namespace

bool active(const Tensor& x) {
#ifdef GRPO_INVARIANT_CUDA
  return Scope::on() && !at::GradMode::is_enabled() && x.is_cuda();
#else
  (void)x;
  return false;
#endif
}

#ifdef GRPO_INVARIANT_CUDA

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  if (!float_type(x) || weight.scalar_type() != x.scalar_type() || weight.dim() != 1 || x.dim() == 0 ||
      weight.size(0) != x.size(-1))
    return {};
  return invariant::cuda::rms_norm(x, weight, eps);
}

Tensor rope(const Tensor& x, const RopeTables& rope, bool interleave) {
  if (x.dim() != 4 || !float_type(x) || x.stride(3) != 1 || x.size(3) % 2 != 0 || !rope.fit(x, x.size(3) / 2))
    return {};
  return cuda::rope(x, rope.cos, rope.sin, interleave);
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  if (!float_type(gate) || up.scalar_type() != gate.scalar_type() || gate.sizes() != up.sizes()) return {};
  return invariant::cuda::swiglu(gate, up);
}

std::pair<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& y, const Tensor& weight, double eps) {
  if (!float_type(x) || x.dim() == 0 || y.sizes() != x.sizes() || y.scalar_type() != x.scalar_type() ||
      y.device() != x.device() || !x.is_contiguous() || !y.is_contiguous() || weight.dim() != 1 ||
      weight.size(0) != x.size(-1) || weight.scalar_type() != x.scalar_type() || weight.device() != x.device() ||
      !weight.is_contiguous())
    return {};
  return cuda::add_rms_norm(x, y, weight, eps);
}

Tensor mla_decode_prologue(const Tensor& q, const Tensor& q_lat, const Tensor& comp, const Tensor& norm_weight,
                           double eps, const RopeTables& rope, bool interleave, const Tensor& write_slots,
                           Tensor& cache) {
  if (q.dim() != 3 || q_lat.dim() != 3 || comp.dim() != 2 || cache.dim() != 2 || norm_weight.dim() != 1 ||
      write_slots.dim() != 1 || !float_type(q))
    return {};
  const int64_t B = q.size(0), heads = q.size(1), r = q_lat.size(2), dr = comp.size(1) - r;
  for (const Tensor* t : std::initializer_list<const Tensor*>{&q_lat, &comp, &norm_weight, &cache})
    if (t->scalar_type() != q.scalar_type() || t->device() != q.device()) return {};
  if (q_lat.size(0) != heads || q_lat.size(1) != B || comp.size(0) != B || dr <= 0 || dr % 2 != 0 ||
      q.size(2) < dr || norm_weight.size(0) != r || cache.size(1) != r + dr || write_slots.size(0) != B)
    return {};
  if (q.stride(2) != 1 || q_lat.stride(2) != 1 || comp.stride(1) != 1 || !cache.is_contiguous() ||
      !norm_weight.is_contiguous() || write_slots.scalar_type() != at::kLong || write_slots.device() != q.device() ||
      !write_slots.is_contiguous() || !rope.fit(q.unsqueeze(1), dr / 2))
    return {};
  return cuda::mla_decode_prologue(q, q_lat, comp, norm_weight, eps, rope.cos, rope.sin, interleave, write_slots, cache);
}

ExpertGroups group_by_expert(const Tensor& experts, int64_t num_experts) {
  if (experts.dim() != 2) throw Error("fused group_by_expert: expected (tokens, k) expert indices");
  if (experts.numel() >= ((int64_t)1 << 31)) throw Error("fused group_by_expert: 2^31 routed pairs or more");
  cuda::ExpertGroups g = cuda::group_by_expert(experts, num_experts);
  return {g.token, g.inverse, g.counts, g.ends};
}

Tensor combine_experts(const Tensor& y, const ExpertGroups& groups, const Tensor& weights, const Tensor& shared) {
  if (weights.dim() != 2) throw Error("fused combine_experts: expected (tokens, k) weights");
  return cuda::combine_experts(y, groups.inverse, weights, weights.size(1), shared);
}

Routing route(const Tensor& logits, const Tensor& bias, const ModelConfig& c) {
  const int64_t E = logits.dim() == 2 ? logits.size(1) : 0;
  const bool group_limited = c.topk_method != TopkMethod::Greedy && c.n_group > 1;
  const bool noaux_tc = c.topk_method == TopkMethod::NoauxTc;
  if (logits.dim() != 2 || !logits.is_cuda() || logits.scalar_type() != at::kFloat || E == 0 || E > 512 ||
      E != c.n_routed_experts || c.num_experts_per_tok < 1 || c.num_experts_per_tok > 32 || c.num_experts_per_tok > E ||
      (noaux_tc && (!bias.defined() || bias.numel() != E)) ||
      (group_limited && (c.n_group > 32 || E % c.n_group != 0 || c.topk_group < 1 || c.topk_group > c.n_group)))
    return {};
  cuda::Routing r = cuda::route(logits, noaux_tc ? bias.to(logits.device(), at::kFloat).contiguous() : Tensor(),
                                c.num_experts_per_tok, c.n_group, c.topk_group, c.scoring_func == ScoringFunc::Sigmoid,
                                noaux_tc, group_limited, c.norm_topk_prob, c.routed_scaling_factor);
  return {r.scores, r.experts, r.weights};
}

Tensor linear_rows(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t K = x.dim() ? x.size(-1) : 0;
  if (x.dim() == 0 || !x.is_cuda() || x.scalar_type() != at::kBFloat16 || K == 0 || K % 8 != 0 ||
      x.numel() / K > 8 || !x.is_contiguous() || !aligned16(x) || weight.dim() != 2 || weight.size(1) != K ||
      weight.scalar_type() != at::kBFloat16 || !weight.is_contiguous() || !aligned16(weight) ||
      weight.device() != x.device() ||
      (bias.defined() && (bias.dim() != 1 || bias.size(0) != weight.size(0) || bias.scalar_type() != at::kBFloat16 ||
                          !bias.is_contiguous() || bias.device() != x.device())))
    return {};
  return cuda::linear_rows(x, weight, bias, kernel_adopted("dependent_launch"));
}

namespace {

// Whether grouped_rows and grouped_tiles take these operands.
bool grouped_operands(const Tensor& x, const Tensor& weight, const Tensor& ends) {
  return x.dim() == 2 && x.is_cuda() && x.scalar_type() == at::kBFloat16 && x.size(1) % 8 == 0 && x.is_contiguous() &&
         aligned16(x) && weight.dim() == 3 && weight.size(2) == x.size(1) && weight.scalar_type() == at::kBFloat16 &&
         weight.is_contiguous() && aligned16(weight) && weight.device() == x.device() && ends.dim() == 1 &&
         ends.size(0) == weight.size(0) && ends.scalar_type() == at::kInt && ends.is_contiguous() &&
         ends.device() == x.device();
}

}  // namespace

Tensor grouped_rows(const Tensor& x, const Tensor& weight, const Tensor& ends) {
  if (!grouped_operands(x, weight, ends)) return {};
  return cuda::grouped_rows(x, weight, ends, kernel_adopted("dependent_launch"));
}

Tensor grouped_tiles(const Tensor& x, const Tensor& weight, const Tensor& ends) {
  if (!grouped_operands(x, weight, ends) || weight.size(1) % 2 != 0) return {};
  return cuda::grouped_tiles(x, weight, ends);
}

std::pair<Tensor, Tensor> sample(const Tensor& logits, const Tensor& temperature, const Tensor& uniform) {
  auto per_row = [&](const Tensor& t) {
    return t.dim() == 1 && t.size(0) == logits.size(0) && t.scalar_type() == at::kFloat && t.is_contiguous() &&
           t.device() == logits.device();
  };
  if (!logits.is_cuda() || logits.dim() != 2 || logits.scalar_type() != at::kFloat || !logits.is_contiguous() ||
      logits.size(1) == 0 || !per_row(temperature) || !per_row(uniform))
    return {};
  return cuda::sample(logits, temperature, uniform);
}

#else

Tensor rms_norm(const Tensor&, const Tensor&, double) { return {}; }
Tensor rope(const Tensor&, const RopeTables&, bool) { return {}; }
Tensor swiglu(const Tensor&, const Tensor&) { return {}; }
std::pair<Tensor, Tensor> add_rms_norm(const Tensor&, const Tensor&, const Tensor&, double) { return {}; }
Tensor mla_decode_prologue(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double, const RopeTables&, bool,
                           const Tensor&, Tensor&) {
  return {};
}
ExpertGroups group_by_expert(const Tensor&, int64_t) { throw Error("fused kernels: built without CUDA"); }
Tensor combine_experts(const Tensor&, const ExpertGroups&, const Tensor&, const Tensor&) {
  throw Error("fused kernels: built without CUDA");
}
Routing route(const Tensor&, const Tensor&, const ModelConfig&) { return {}; }
Tensor linear_rows(const Tensor&, const Tensor&, const Tensor&) { return {}; }
Tensor grouped_rows(const Tensor&, const Tensor&, const Tensor&) { return {}; }
Tensor grouped_tiles(const Tensor&, const Tensor&, const Tensor&) { return {}; }
std::pair<Tensor, Tensor> sample(const Tensor&, const Tensor&, const Tensor&) { return {}; }

#endif

}  // namespace grpo::model::fused

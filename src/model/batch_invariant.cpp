#include "model/batch_invariant.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <limits>
#include <string>

#include "model/deepseek.h"
#include "model/fused_kernels.h"
#include "model/llama.h"
#ifdef GRPO_PAGED_MLA_CUDA
#include "model/paged_mla_cuda.h"
#endif
#include "util/error.h"

namespace grpo::model::invariant {

namespace {

// y = x W^T (+ b), rounded to the weight's dtype; an adapter adds scaling * (x A^T) B^T in fp32
// before that rounding, as LinearImpl does.
Tensor linear(LinearImpl& l, const Tensor& x) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = l.out_features;
  const auto dtype = l.weight.scalar_type();
  Tensor x2 = x.reshape({-1, x.size(-1)});
  const bool adapter = l.has_lora() && l.lora_enabled;
  if (!l.bias.defined() && !adapter) return invariant::matmul_nt(x2, l.weight, dtype).view(shape);
  Tensor y = invariant::matmul_nt(x2, l.weight);
  if (l.bias.defined()) y = y + l.bias.to(at::kFloat);
  y = y.to(dtype);
  if (adapter) {
    Tensor delta = invariant::matmul_nt(invariant::matmul_nt(x2, l.lora_A->weight), l.lora_B->weight) * l.lora_scaling;
    y = (y.to(at::kFloat) + delta).to(dtype);
  }
  return y.view(shape);
}

Tensor norm(RMSNormImpl& n, const Tensor& x) { return invariant::rms_norm(x, n.weight, n.eps); }

// RoPE of rows x (N, heads, d) by tables (N, 1, d/2). On CUDA one fused kernel, which rounds where
// apply_rope's seven ATen kernels round and equals them to the bit (fused_kernels.h); an
// elementwise result is batch-invariant either way.
Tensor rope(const Tensor& x, const RopeTables& t, bool interleave) {
  if (x.is_cuda())
    if (Tensor y = fused::rope(x.unsqueeze(0), RopeTables{t.cos.unsqueeze(0), t.sin.unsqueeze(0)}, interleave);
        y.defined())
      return y.squeeze(0);
  return apply_rope(x, t, interleave);
}

Tensor mlp(MLPImpl& m, const Tensor& x) {
  return linear(*m.down_proj, invariant::swiglu(linear(*m.gate_proj, x), linear(*m.up_proj, x)));
}

// DeepSeek's MLA in the absorbed form: scores = [q_nope W_uk | q_pe] . [latent | k_pe],
// out = (p . latent) W_uv^T, per head; the cache keeps [latent | k_pe].
Tensor mla(MLAImpl& a, const Tensor& x, const RopeTables& rope, Tensor& cache, const TokenRows& rows) {
  const int64_t N = x.size(0), nh = a.num_heads, dn = a.qk_nope_head_dim, dr = a.qk_rope_head_dim,
                dv = a.v_head_dim, r = a.kv_lora_rank;
  const auto dtype = x.scalar_type();
  Tensor q = a.q_proj ? linear(*a.q_proj, x) : linear(*a.q_b_proj, norm(*a.q_a_layernorm, linear(*a.q_a_proj, x)));
  q = q.view({N, nh, dn + dr});
  Tensor q_pe = invariant::rope(q.narrow(-1, dn, dr), rope, a.rope_interleave);
  Tensor comp = linear(*a.kv_a_proj_with_mqa, x);
  Tensor latent = norm(*a.kv_a_layernorm, comp.narrow(-1, 0, r));
  Tensor k_pe = invariant::rope(comp.narrow(-1, r, dr).view({N, 1, dr}), rope, a.rope_interleave).view({N, dr});
  cache.index_copy_(0, rows.write_slots, at::cat({latent, k_pe}, -1).to(cache.scalar_type()));
  // Per head: q_lat = q_nope W_uk (r), out = o_lat W_uv^T (dv); head-major rows, one grouped product each.
  Tensor w = a.kv_b_proj->effective_weight().view({nh, dn + dv, r});
  const RowGroups by_head = contiguous_groups(nh, N, x.device());
  Tensor q_nope = q.narrow(-1, 0, dn).transpose(0, 1).reshape({nh * N, dn});
  Tensor q_lat = invariant::grouped_matmul_nt(q_nope, w.narrow(1, 0, dn).transpose(1, 2), by_head, dtype);
  Tensor qc = at::cat({q_lat.view({nh, N, r}).transpose(0, 1), q_pe}, -1);  // (N, nh, r + dr)
  HeadLayout heads;
  heads.key_width = r + dr;
  heads.value_width = r;
  Tensor o_lat;  // (N, nh, r)
#ifdef GRPO_PAGED_MLA_CUDA
  if (cuda::paged_mla_supported(qc, cache, r))  // the tensor-core kernel, its keys split at fixed positions
    o_lat = cuda::paged_mla_attention_invariant(qc, cache, rows.keys.table, rows.keys.table_start, rows.keys.num_keys,
                                                rows.keys.max_keys, rows.keys.block_size, r, a.softmax_scale,
                                                rows.keys.query_runs);
#endif
  if (!o_lat.defined()) o_lat = invariant::attention(qc, cache, rows.keys, heads, a.softmax_scale).to(dtype);
  Tensor o = invariant::grouped_matmul_nt(o_lat.transpose(0, 1).reshape({nh * N, r}), w.narrow(1, dn, dv), by_head, dtype);
  return linear(*a.o_proj, o.view({nh, N, dv}).transpose(0, 1).reshape({N, nh * dv}));
}

// Grouped-query attention; the cache keeps [k (nkv*hd) | v (nkv*hd)].
Tensor gqa(GroupedQueryAttentionImpl& a, const Tensor& x, const RopeTables& rope, Tensor& cache,
           const TokenRows& rows) {
  const int64_t N = x.size(0), nh = a.num_heads, nkv = a.num_kv_heads, hd = a.head_dim;
  Tensor q = linear(*a.q_proj, x).view({N, nh, hd});
  Tensor k = linear(*a.k_proj, x).view({N, nkv, hd});
  Tensor v = linear(*a.v_proj, x).view({N, nkv, hd});
  if (a.q_norm) {
    q = norm(*a.q_norm, q);
    k = norm(*a.k_norm, k);
  }
  q = invariant::rope(q, rope, false);
  k = invariant::rope(k, rope, false);
  cache.index_copy_(0, rows.write_slots, at::cat({k.reshape({N, nkv * hd}), v.reshape({N, nkv * hd})}, -1));
  HeadLayout heads{nkv, 0, hd, hd, nkv * hd, hd, hd};
  Tensor o = invariant::attention(q, cache, rows.keys, heads, a.softmax_scale).to(x.scalar_type());
  return linear(*a.o_proj, o.reshape({N, nh * hd}));
}

// The routed experts plus the shared ones. Each token's k contributions are summed in its top-k
// order, each rounded to the model dtype first (as the ordinary forward's index_add does).
Tensor moe(MoEImpl& m, const Tensor& x, Tensor* experts_out) {
  const RouterImpl& router = *m.gate;
  const ModelConfig& c = router.config;
  const int64_t E = c.n_routed_experts, k = c.num_experts_per_tok;
  const auto dtype = x.scalar_type();
  Tensor logits = invariant::matmul_nt(x, router.weight);
  Tensor scores = c.scoring_func == ScoringFunc::Softmax ? invariant::softmax(logits) : invariant::sigmoid(logits);
  // Ascending expert ids: topk's own order may depend on the call's size. (A group's score, the
  // sum of its best two, adds two numbers: the same in any order.)
  Tensor idx = std::get<0>(router.top_experts(scores).sort(-1));
  Tensor w = scores.gather(1, idx);
  if (c.norm_topk_prob) w = w / (invariant::row_sum(w).unsqueeze(1) + 1e-20);
  w = w * c.routed_scaling_factor;
  if (experts_out) *experts_out = idx;

  RoutedExpertsImpl& ex = *m.experts;
  const int64_t I = ex.intermediate;
  // (token, expert) pairs n*k + j, grouped by expert; every product runs in that order.
  const RowGroups g = group_rows(idx.reshape({-1}), E);
  Tensor xs = x.index_select(0, at::div(g.order, k, "floor"));
  // Each expert product rounded to the model dtype, with its adapter's side path added in fp32 first.
  auto product = [&](const Tensor& in, const Tensor& W, const Tensor& A, const Tensor& B, double scaling) {
    if (!A.defined() || !ex.lora_enabled) return invariant::grouped_matmul_nt(in, W, g, dtype);
    Tensor out = invariant::grouped_matmul_nt(in, W, g).to(dtype);
    Tensor delta = invariant::grouped_matmul_nt(invariant::grouped_matmul_nt(in, A, g), B, g) * scaling;
    return (out.to(at::kFloat) + delta).to(dtype);
  };
  Tensor gu = product(xs, ex.gate_up_proj, ex.gate_up_lora_A, ex.gate_up_lora_B, ex.gate_up_lora_scaling);
  Tensor h = invariant::swiglu(gu.narrow(-1, 0, I), gu.narrow(-1, I, I));
  Tensor y = product(h, ex.down_proj, ex.down_lora_A, ex.down_lora_B, ex.down_lora_scaling);
  Tensor out = invariant::combine_experts(y, g.order, w, k);
  if (m.shared_experts) out = out + mlp(*m.shared_experts, x);
  return out;
}

}  // namespace

Tensor hidden_states(CausalLM& model, const TokenRows& in, const std::vector<Tensor>& caches,
                     std::vector<Tensor>* experts) {
  at::NoGradGuard no_grad;
  const ModelConfig& c = model.config();
  const int64_t L = c.num_hidden_layers;
  if (caches.size() != 1 && (int64_t)caches.size() != L)
    throw Error("batch-invariant forward: expected 1 or " + std::to_string(L) + " cache tensors, got " +
                std::to_string(caches.size()));
  const auto dtype = model.dtype();
  const auto dev = model.device();
  // On the model's device; the key layout checked once for the whole forward.
  TokenRows rows{in.ids.to(dev), in.positions.to(dev), in.write_slots.to(dev),
                 in.keys.max_keys >= 0 ? in.keys : checked_keys(in.keys, caches[0].size(0), dev),
                 in.inv_freq.defined() ? in.inv_freq : rope_inv_freq(c)};
  Tensor h = model.model->embed_tokens->weight.index_select(0, rows.ids);
  auto [cos, sin] = invariant::rope_cos_sin(rows.positions, rows.inv_freq);
  const double factor = c.rope_attention_factor();
  RopeTables rope{(cos * factor).to(dtype).unsqueeze(1), (sin * factor).to(dtype).unsqueeze(1)};  // (N, 1, d/2)
  if (experts) experts->clear();
  for (int64_t l = 0; l < L; ++l) {
    auto layer = model.model->layers[l]->as<DecoderLayer>();
    Tensor cache = caches.size() == 1 ? caches[0] : caches[l];
    Tensor a_in = norm(*layer->input_layernorm, h);
    Tensor attn;
    if (auto* m = dynamic_cast<MLAImpl*>(layer->self_attn.get()))
      attn = mla(*m, a_in, rope, cache, rows);
    else
      attn = gqa(*dynamic_cast<GroupedQueryAttentionImpl*>(layer->self_attn.get()), a_in, rope, cache, rows);
    h = h + attn;
    Tensor f_in = norm(*layer->post_attention_layernorm, h);
    h = h + (layer->moe ? moe(*layer->moe, f_in, experts ? &experts->emplace_back() : nullptr)
                        : mlp(*layer->dense_mlp, f_in));
  }
  return norm(*model.model->norm, h);
}

Tensor logits(CausalLM& model, const Tensor& hidden) {
  at::NoGradGuard no_grad;
  return invariant::matmul_nt(hidden, model.lm_head_weight(), model.dtype()).to(at::kFloat);
}

Tensor next_token_logprobs(CausalLM& model, const Tensor& hidden) { return invariant::log_softmax(logits(model, hidden)); }

CompletionValues completion_logprobs(CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                     const std::vector<std::vector<int64_t>>& completions, int64_t rows_per_chunk) {
  at::NoGradGuard no_grad;
  std::vector<int64_t> ids, pos, start, count, target_rows, targets;
  for (size_t b = 0; b < prompts.size(); ++b) {
    const int64_t first = (int64_t)ids.size(), p = (int64_t)prompts[b].size();
    const auto& cb = completions[b];
    for (int64_t t : prompts[b]) ids.push_back(t);
    for (size_t j = 0; j + 1 < cb.size(); ++j) ids.push_back(cb[j]);
    for (int64_t t = 0; t < (int64_t)ids.size() - first; ++t) {
      pos.push_back(t);
      start.push_back(first);
      count.push_back(t + 1);
    }
    for (size_t j = 0; j < cb.size(); ++j) {
      target_rows.push_back(first + p - 1 + (int64_t)j);
      targets.push_back(cb[j]);
    }
  }
  const auto dev = model.device();
  auto i64 = [&](const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(dev); };
  const int64_t N = (int64_t)ids.size();
  TokenRows rows;
  rows.ids = i64(ids);
  rows.positions = i64(pos);
  rows.write_slots = at::arange(N, at::TensorOptions().dtype(at::kLong).device(dev));
  rows.keys.table = at::arange(N, at::TensorOptions().dtype(at::kLong));  // built and checked on the host
  rows.keys.table_start = at::tensor(start, at::TensorOptions().dtype(at::kLong));
  rows.keys.num_keys = at::tensor(count, at::TensorOptions().dtype(at::kLong));
  Tensor cache = at::zeros({N, model.config().kv_cache_width()}, at::TensorOptions().dtype(model.dtype()).device(dev));
  CompletionValues out;
  Tensor h = hidden_states(model, rows, {cache}, &out.experts);
  if (targets.empty()) {
    out.logprobs = at::empty({0}, at::TensorOptions().dtype(at::kFloat).device(dev));
    return out;
  }
  const int64_t T = (int64_t)targets.size(), V = model.config().vocab_size;
  const int64_t chunk = rows_per_chunk > 0 ? rows_per_chunk : std::max<int64_t>(1, (int64_t(512) << 20) / (4 * V));
  const Tensor rows_h = h.index_select(0, i64(target_rows)), target = i64(targets).unsqueeze(1);
  std::vector<Tensor> parts;
  for (int64_t s = 0; s < T; s += chunk) {
    const int64_t n = std::min(chunk, T - s);
    parts.push_back(next_token_logprobs(model, rows_h.narrow(0, s, n)).gather(1, target.narrow(0, s, n)).squeeze(1));
  }
  out.logprobs = at::cat(parts);
  return out;
}

}  // namespace grpo::model::invariant

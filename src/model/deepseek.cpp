#include "model/deepseek.h"

#include "model/fused_kernels.h"
#include "model/kernel_trial.h"
#include "model/train_kernels.h"

#ifdef GRPO_PAGED_MLA_CUDA
#include "model/paged_mla_cuda.h"
#endif

namespace grpo::model {

MLAImpl::MLAImpl(const ModelConfig& c)
    : num_heads(c.num_attention_heads),
      qk_nope_head_dim(c.qk_nope_head_dim),
      qk_rope_head_dim(c.qk_rope_head_dim),
      v_head_dim(c.v_head_dim),
      kv_lora_rank(c.kv_lora_rank),
      softmax_scale(c.softmax_scale()),
      rope_interleave(c.rope_interleave) {
  const int64_t H = c.hidden_size, q_dim = num_heads * c.qk_head_dim();
  if (c.q_lora_rank) {
    q_a_proj = register_module("q_a_proj", Linear(H, *c.q_lora_rank));
    q_a_layernorm = register_module("q_a_layernorm", RMSNorm(*c.q_lora_rank, c.rms_norm_eps));
    q_b_proj = register_module("q_b_proj", Linear(*c.q_lora_rank, q_dim));
  } else {
    q_proj = register_module("q_proj", Linear(H, q_dim));
  }
  kv_a_proj_with_mqa = register_module("kv_a_proj_with_mqa", Linear(H, kv_lora_rank + qk_rope_head_dim));
  kv_a_layernorm = register_module("kv_a_layernorm", RMSNorm(kv_lora_rank, c.rms_norm_eps));
  kv_b_proj = register_module("kv_b_proj", Linear(kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim)));
  o_proj = register_module("o_proj", Linear(num_heads * v_head_dim, H));
}

Tensor MLAImpl::forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* cache_rows) {
  const int64_t B = x.size(0), T = x.size(1);
  Tensor q = q_proj ? q_proj(x) : q_b_proj(q_a_layernorm(q_a_proj(x)));
  q = q.view({B, T, num_heads, qk_nope_head_dim + qk_rope_head_dim});
  Tensor compressed = kv_a_proj_with_mqa(x);  // (B, T, kv_lora_rank + rope_dim)
  Tensor kv_latent = kv_a_layernorm(compressed.narrow(-1, 0, kv_lora_rank));
  Tensor kv = kv_b_proj(kv_latent).view({B, T, num_heads, qk_nope_head_dim + v_head_dim});
  auto attend = [&](const Tensor& query, const Tensor& key, const Tensor& value) {  // each (B, T, nh, d)
    Tensor out = causal_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), mask,
                                  softmax_scale);
    return o_proj(out.transpose(1, 2).reshape({B, T, num_heads * v_head_dim}));
  };
  if (!cache_rows && kernel_adopted("mla_assemble")) {
    // Adopted: the query, key and value assembled (RoPE included) in one kernel, and their
    // gradients in two (model/train_kernels.h); the values of the chain below.
    const auto qkv = train::mla_inputs(q, kv, compressed.narrow(-1, kv_lora_rank, qk_rope_head_dim), rope.cos,
                                       rope.sin, rope_interleave, qk_nope_head_dim);
    if (!qkv.empty()) return attend(qkv[0], qkv[1], qkv[2]);
  }
  Tensor q_nope = q.narrow(-1, 0, qk_nope_head_dim);
  Tensor q_pe = apply_rope(q.narrow(-1, qk_nope_head_dim, qk_rope_head_dim), rope, rope_interleave);
  Tensor k_pe = compressed.narrow(-1, kv_lora_rank, qk_rope_head_dim).view({B, T, 1, qk_rope_head_dim});
  k_pe = apply_rope(k_pe, rope, rope_interleave);
  if (cache_rows) *cache_rows = at::cat({kv_latent, k_pe.view({B, T, qk_rope_head_dim})}, -1);
  Tensor k_nope = kv.narrow(-1, 0, qk_nope_head_dim);
  Tensor v = kv.narrow(-1, qk_nope_head_dim, v_head_dim);
  return attend(at::cat({q_nope, q_pe}, -1), at::cat({k_nope, k_pe.expand({B, T, num_heads, qk_rope_head_dim})}, -1),
                v);
}

bool& MLAImpl::paged_kernel() {
  static bool on = true;
  return on;
}

Tensor MLAImpl::decode(const Tensor& x, const RopeTables& rope, Tensor cache, const PagedKV& paged) {
  const int64_t B = x.size(0), nh = num_heads, dn = qk_nope_head_dim, dr = qk_rope_head_dim,
                dv = v_head_dim, r = kv_lora_rank, D = r + dr;
  Tensor q = q_proj ? q_proj(x) : q_b_proj(q_a_layernorm(q_a_proj(x)));
  q = q.view({B, nh, dn + dr});
  Tensor comp = kv_a_proj_with_mqa(x);  // (B, r + dr)
  // Absorbed form: scores = [q_nope W_uk | q_pe] . [latent | k_pe]; out = (p . latent) W_uv^T.
  Tensor w = kv_b_proj->effective_weight().view({nh, dn + dv, r});
  Tensor q_lat = at::bmm(q.narrow(-1, 0, dn).transpose(0, 1), w.narrow(1, 0, dn));  // (nh, B, r)
  Tensor qc;                                                                         // (B, nh, D)
  // Adopted ("-mla_decode_prologue" turns it off): the norm, both rotations, the cache write and
  // the query's assembly in one kernel.
  const bool prologue = fused::active(x) && kernel_adopted("mla_decode_prologue");
  if (prologue)
    qc = fused::mla_decode_prologue(q, q_lat, comp, kv_a_layernorm->weight, kv_a_layernorm->eps, rope, rope_interleave,
                                    paged.write_slots, cache);
  if (!qc.defined()) {
    Tensor q_pe = apply_rope(q.narrow(-1, dn, dr).unsqueeze(1), rope, rope_interleave).squeeze(1);
    Tensor lat = kv_a_layernorm(comp.narrow(-1, 0, r));
    Tensor kpe = apply_rope(comp.narrow(-1, r, dr).view({B, 1, 1, dr}), rope, rope_interleave).view({B, dr});
    cache.index_copy_(0, paged.write_slots, at::cat({lat, kpe}, -1));
    qc = at::cat({q_lat.transpose(0, 1), q_pe}, -1);
  }
  Tensor o_lat;  // (B, nh, r)
#ifdef GRPO_PAGED_MLA_CUDA
  if (paged_kernel() && cuda::paged_mla_supported(qc, cache, r))
    o_lat = cuda::paged_mla_decode(qc, cache, paged.table, paged.lens, paged.block_size, paged.key_start, r,
                                   softmax_scale);
#endif
  if (!o_lat.defined()) {
    Tensor kv = cache.index_select(0, paged.gather_index()).view({B, paged.padded_keys(), D});
    Tensor scores = at::bmm(qc, kv.transpose(1, 2)).to(at::kFloat) * softmax_scale;  // (B, nh, Lpad)
    Tensor probs = masked_softmax(scores, paged.invalid(), x.scalar_type());
    o_lat = at::bmm(probs, kv.narrow(-1, 0, r));
  }
  if (prologue) {  // the product written in (B, nh, dv) order, for o_proj without a copy
    Tensor o = at::empty({B, nh, dv}, o_lat.options()), by_head = o.transpose(0, 1);
    at::bmm_out(by_head, o_lat.transpose(0, 1), w.narrow(1, dn, dv).transpose(1, 2));
    return o_proj(o.view({B, nh * dv}));
  }
  Tensor o = at::bmm(o_lat.transpose(0, 1), w.narrow(1, dn, dv).transpose(1, 2)).transpose(0, 1);  // (B, nh, dv)
  return o_proj(o.reshape({B, nh * dv}));
}

}  // namespace grpo::model

#include "model/llama.h"

namespace grpo::model {

GroupedQueryAttentionImpl::GroupedQueryAttentionImpl(const ModelConfig& c)
    : num_heads(c.num_attention_heads),
      num_kv_heads(c.num_key_value_heads),
      head_dim(c.head_dim),
      softmax_scale(c.softmax_scale()) {
  const int64_t H = c.hidden_size;
  q_proj = register_module("q_proj", Linear(H, num_heads * head_dim, c.qkv_bias));
  k_proj = register_module("k_proj", Linear(H, num_kv_heads * head_dim, c.qkv_bias));
  v_proj = register_module("v_proj", Linear(H, num_kv_heads * head_dim, c.qkv_bias));
  o_proj = register_module("o_proj", Linear(num_heads * head_dim, H, c.o_bias));
  if (c.qk_norm) {
    q_norm = register_module("q_norm", RMSNorm(head_dim, c.rms_norm_eps));
    k_norm = register_module("k_norm", RMSNorm(head_dim, c.rms_norm_eps));
  }
}

void GroupedQueryAttentionImpl::project(const Tensor& x, Tensor& q, Tensor& k, Tensor& v) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  auto heads = [&](int64_t n) {
    auto s = shape;
    s.push_back(n);
    s.push_back(head_dim);
    return s;
  };
  q = q_proj(x).view(heads(num_heads));
  k = k_proj(x).view(heads(num_kv_heads));
  v = v_proj(x).view(heads(num_kv_heads));
  if (q_norm) {
    q = q_norm(q);
    k = k_norm(k);
  }
}

Tensor GroupedQueryAttentionImpl::forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask,
                                          Tensor* cache_rows) {
  const int64_t B = x.size(0), T = x.size(1), groups = num_heads / num_kv_heads;
  Tensor q, k, v;
  project(x, q, k, v);  // (B, T, heads, hd)
  q = apply_rope(q, rope, /*interleave=*/false);
  k = apply_rope(k, rope, /*interleave=*/false);
  if (cache_rows) *cache_rows = at::cat({k.reshape({B, T, -1}), v.reshape({B, T, -1})}, -1);
  // Each key/value head serves `groups` consecutive query heads.
  Tensor query = q.transpose(1, 2);  // (B, nh, T, hd)
  Tensor key = k.transpose(1, 2).repeat_interleave(groups, 1);
  Tensor value = v.transpose(1, 2).repeat_interleave(groups, 1);
  Tensor out = causal_attention(query, key, value, mask, softmax_scale);
  return o_proj(out.transpose(1, 2).reshape({B, T, num_heads * head_dim}));
}

Tensor GroupedQueryAttentionImpl::decode(const Tensor& x, const RopeTables& rope, Tensor cache,
                                         const PagedKV& paged) {
  const int64_t B = x.size(0), nkv = num_kv_heads, hd = head_dim, groups = num_heads / num_kv_heads;
  Tensor q, k, v;
  project(x, q, k, v);  // (B, heads, hd)
  q = apply_rope(q.unsqueeze(1), rope, false).squeeze(1);
  k = apply_rope(k.unsqueeze(1), rope, false).squeeze(1);
  cache.index_copy_(0, paged.write_slots, at::cat({k.reshape({B, nkv * hd}), v.reshape({B, nkv * hd})}, -1));
  Tensor kv = cache.index_select(0, paged.gather_index()).view({B, paged.padded_keys(), 2, nkv, hd});
  Tensor keys = kv.select(2, 0).permute({0, 2, 3, 1});     // (B, nkv, hd, Lpad)
  Tensor values = kv.select(2, 1).transpose(1, 2);         // (B, nkv, Lpad, hd)
  Tensor qg = q.view({B, nkv, groups, hd});                // query heads grouped by their key/value head
  Tensor scores = at::matmul(qg, keys).to(at::kFloat) * softmax_scale;  // (B, nkv, groups, Lpad)
  Tensor probs = masked_softmax(scores, paged.invalid().unsqueeze(1), x.scalar_type());
  Tensor o = at::matmul(probs, values);                    // (B, nkv, groups, hd)
  return o_proj(o.reshape({B, num_heads * hd}));
}

}  // namespace grpo::model

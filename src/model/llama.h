// The attention of the Llama family: Llama 3, Qwen2/2.5, Qwen3 and Qwen3-MoE. Grouped-query
// attention: num_attention_heads query heads share num_key_value_heads key/value heads (head h
// reads key/value head h / (num_attention_heads / num_key_value_heads)); RoPE over the whole head
// in the rotate-half layout, with default, linear, Llama 3 or YaRN frequencies (model/layers.h).
// The members differ only in what the config says:
//   - Qwen2: q_proj, k_proj and v_proj carry biases, o_proj none;
//   - Llama 3, Qwen3: attention_bias puts a bias on all four projections (usually false);
//   - Qwen3 and Qwen3-MoE: q_norm and k_norm, an RMSNorm over each query and key head before RoPE.
// Their decoder layers are otherwise the shared ones (model/causal_lm.h): SwiGLU MLP, or for
// Qwen3-MoE softmax top-k routed experts without shared experts (model/moe.h).
//
// KV cache: each token keeps its rotated keys then its values, [k (nkv*hd) | v (nkv*hd)].
#pragma once

#include <ATen/ATen.h>

#include "config/model_config.h"
#include "model/layers.h"
#include "model/linear.h"

namespace grpo::model {

struct GroupedQueryAttentionImpl : AttentionImpl {
  explicit GroupedQueryAttentionImpl(const ModelConfig& c);
  Tensor forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* cache_rows) override;
  Tensor decode(const Tensor& x, const RopeTables& rope, Tensor cache, const PagedKV& kv) override;

  int64_t num_heads, num_kv_heads, head_dim;
  double softmax_scale;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  RMSNorm q_norm{nullptr}, k_norm{nullptr};  // Qwen3 only

 private:
  // Queries (..., nh, hd) and keys (..., nkv, hd), normalised (Qwen3) but not yet rotated, and
  // values (..., nkv, hd), for x (..., H).
  void project(const Tensor& x, Tensor& q, Tensor& k, Tensor& v);
};

}  // namespace grpo::model

#include "model/flops.h"

namespace grpo::model {

double forward_flops(const ModelConfig& c, int64_t tokens, int64_t logit_tokens) {
  const double H = c.hidden_size, nh = c.num_attention_heads, n = tokens;
  // Per-token multiply-adds of the attention projections, and the widths of a query-key product
  // and a value read per head.
  double attn_proj, qk_dim, v_dim;
  if (c.mla()) {
    attn_proj = c.q_lora_rank ? H * *c.q_lora_rank + *c.q_lora_rank * nh * c.qk_head_dim() : H * nh * c.qk_head_dim();
    attn_proj += H * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank * nh * (c.qk_nope_head_dim + c.v_head_dim) +
                 nh * c.v_head_dim * H;
    qk_dim = c.qk_head_dim();
    v_dim = c.v_head_dim;
  } else {
    const double hd = c.head_dim, nkv = c.num_key_value_heads;
    attn_proj = H * nh * hd + 2 * H * nkv * hd + nh * hd * H;
    qk_dim = v_dim = hd;
  }
  double params = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    params += attn_proj;
    if (c.is_moe_layer(l))
      params += 3.0 * H * c.moe_intermediate_size * (c.num_experts_per_tok + c.n_shared_experts) + H * c.n_routed_experts;
    else
      params += 3.0 * H * c.intermediate_size;
  }
  // Causal attention: token t attends to t + 1 positions, n (n + 1) / 2 query-key pairs in all.
  const double pairs = n * (n + 1) / 2;
  const double attention = 2.0 * c.num_hidden_layers * nh * (qk_dim + v_dim) * pairs;
  return 2.0 * params * n + attention + 2.0 * H * c.vocab_size * logit_tokens;
}

}  // namespace grpo::model

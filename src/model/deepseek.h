// DeepSeek-V2/V3's multi-head latent attention (MLA): queries through an optional low-rank
// projection, keys and values rebuilt from a compressed latent (kv_lora_rank) plus one shared
// rotary key (qk_rope_head_dim) per token, which is all the KV cache keeps. RoPE is DeepSeek's
// interleaved layout, optionally with YaRN (model/layers.h). The rest of a DeepSeek decoder layer
// (DeepSeekMoE, the MTP modules) is in model/moe.h and model/causal_lm.h.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "config/model_config.h"
#include "model/layers.h"

namespace grpo::model {

struct MLAImpl : AttentionImpl {
  explicit MLAImpl(const ModelConfig& c);
  // x (B, T, H) -> (B, T, H). Cache rows: [normalised kv latent | rotated rope key],
  // (B, T, kv_lora_rank + qk_rope_head_dim).
  Tensor forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* cache_rows) override;

  // One decode step in the absorbed form ("MQA mode": kv_b_proj folded into the query and the
  // output), reading the latent cache instead of expanding keys and values. On CUDA in bf16 the
  // attention reads the paged cache in place (model/paged_mla_cuda.h); elsewhere it gathers the
  // rows of each block table into one padded tensor first.
  Tensor decode(const Tensor& x, const RopeTables& rope, Tensor cache, const PagedKV& kv) override;

  // Whether decode may use the paged CUDA kernel (on by default; benchmarks and tests turn it off
  // to measure or check against the gathered form). Read when a decode step is built or captured.
  static bool& paged_kernel();

  int64_t num_heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank;
  double softmax_scale;
  bool rope_interleave;
  Linear q_proj{nullptr};                            // when q_lora_rank is null
  Linear q_a_proj{nullptr}, q_b_proj{nullptr};        // when q_lora_rank is set
  RMSNorm q_a_layernorm{nullptr};
  Linear kv_a_proj_with_mqa{nullptr}, kv_b_proj{nullptr}, o_proj{nullptr};
  RMSNorm kv_a_layernorm{nullptr};
};
TORCH_MODULE(MLA);

}  // namespace grpo::model

// The parts every model family shares: RMSNorm, the SwiGLU MLP, rotary position embeddings
// (default, linear, Llama 3 and YaRN frequencies), attention masks, and the interface each
// attention module (DeepSeek's MLA, grouped-query attention) offers to the decoder and to the
// rollout engine's paged KV cache.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <optional>

#include "config/model_config.h"
#include "model/linear.h"

namespace grpo::model {

using at::Tensor;

struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps);
  // x (..., dim) -> same shape and dtype; normalised in fp32 like transformers.
  Tensor forward(const Tensor& x);
  Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t hidden, int64_t intermediate);
  Tensor forward(const Tensor& x);
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

// Per-token cos/sin tables for the rotary part of queries and keys.
struct RopeTables {
  Tensor cos, sin;  // (B, T, 1, rope_dim/2), model dtype, already times YaRN's attention factor
  // What a kernel reading the tables in place needs: both (B, T, 1, half) for x's first two sizes,
  // contiguous, in x's dtype and on its device.
  bool fit(const Tensor& x, int64_t half) const;
};

// RoPE inverse frequencies (rope_dim/2), fp32, with the configured scaling (linear, Llama 3,
// YaRN); computed the way transformers computes them so that the tables agree to the last bit.
Tensor rope_inv_freq(const ModelConfig& c);

// Rotates `x` (..., rope_dim) by the tables. `interleave` (DeepSeek) rotates adjacent pairs
// (x0,x1),(x2,x3),... and writes the result de-interleaved ([evens | odds]), as transformers does
// for both queries and keys (q.k is unchanged by a permutation applied to both); otherwise the
// pairs are (x_i, x_{i+d/2}) (Llama's rotate-half).
Tensor apply_rope(const Tensor& x, const RopeTables& rope, bool interleave);

// How queries may attend: causal only (right-padded or unpadded batches) or an explicit mask.
struct AttentionMask {
  std::optional<Tensor> allowed;  // bool (B, 1, T, T); nullopt = plain causal
};

// softmax(q k^T * scale, causal or as `mask` allows) v over (B, heads, T, d) tensors, through
// PyTorch's scaled_dot_product_attention, in PyTorch's order of backends (on Hopper it picks
// cuDNN's fused attention for MLA's 192-wide queries and keys with 128-wide values; bench_forward
// reports which it took).
Tensor causal_attention(const Tensor& query, const Tensor& key, const Tensor& value, const AttentionMask& mask,
                        double scale);

// What a decode step's attention reads of the paged KV cache. Row b's keys are the positions
// [key_start, lens[b]) of its block table: position p lives in cache row
// table[b][p / block_size] * block_size + p % block_size.
struct PagedKV {
  Tensor write_slots;  // (B) the cache row of each row's new token
  Tensor table;        // (B, nblk) int64 block ids
  Tensor lens;         // (B) int64
  int64_t block_size = 0, key_start = 0;

  // The same keys as one padded gather, for attention without a paged kernel: cache rows
  // gather_index()[b * padded_keys() .. (b + 1) * padded_keys()), those where invalid() is true
  // masked. Built on the first call and shared by the step's layers; a step whose attention reads
  // the cache in place never builds them.
  int64_t padded_keys() const { return table.size(1) * block_size; }
  const Tensor& gather_index() const;  // (B * padded_keys()) int64
  const Tensor& invalid() const;       // (B, 1, padded_keys()) bool

 private:
  mutable Tensor gather_index_, invalid_;
};

// What the decoder and the rollout engine need of an attention module.
struct AttentionImpl : torch::nn::Module {
  // x (B, T, H) -> (B, T, H). When `cache_rows` is given it receives what the KV cache keeps of
  // each token, (B, T, kv_cache_width) (see ModelConfig::kv_cache_width).
  virtual Tensor forward(const Tensor& x, const RopeTables& rope, const AttentionMask& mask, Tensor* cache_rows) = 0;

  // One decode step over the paged cache. x (B, H): one new token per row; its cache row is
  // written to rows kv.write_slots of `cache` (S, kv_cache_width); row b attends to its keys in
  // `kv`. Returns (B, H). No host synchronisation, so a CUDA graph can capture it.
  virtual Tensor decode(const Tensor& x, const RopeTables& rope, Tensor cache, const PagedKV& kv) = 0;
};

// softmax(scores masked by `invalid`) in fp32, rounded to `dtype`: the decode steps' attention weights.
Tensor masked_softmax(const Tensor& scores, const Tensor& invalid, at::ScalarType dtype);

}  // namespace grpo::model

// Decode attention of DeepSeek's multi-head latent attention (MLA) straight from the paged KV
// cache, on CUDA (compiled when the CUDA compiler is found, which defines GRPO_PAGED_MLA_CUDA).
//
// In the absorbed form every head reads the same cache row per key, [latent (r) | k_pe (dr)], so
// one thread block loads a run of keys once for 16 heads and computes their scores and weighted
// latents with bf16 tensor-core steps (fp32 accumulation, softmax in fp32 with an online maximum),
// reading each key's row through the sequence's block table: no gathered copy of the cache. Long
// contexts are split across blocks (flash-decoding) and the pieces combined by a second kernel.
#pragma once

#include <ATen/ATen.h>

namespace grpo::model::cuda {

using at::Tensor;

// Whether paged_mla_decode takes this problem: bf16 on CUDA, the row width D a multiple of 8 and
// the latent rank r one of 64, 128, 256 or 512.
bool paged_mla_supported(const Tensor& q, const Tensor& cache, int64_t latent_rank);

// q (B, heads, D): [q_nope absorbed into the latent (r) | q_pe (dr)]; cache (S, D) rows
// [latent | k_pe]; table (B, nblk) int64 block ids; lens (B) int64. Row b attends to the key
// positions [key_start, lens[b]) of its table (position p in row table[b][p / block_size] *
// block_size + p % block_size) and gets softmax(scale * q . k) . latent, (B, heads, r) in bf16.
// A row with no keys gets zeros. No host synchronisation: CUDA graphs can hold it.
Tensor paged_mla_decode(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& lens,
                        int64_t block_size, int64_t key_start, int64_t latent_rank, double scale);

// paged_mla_decode's kernel in its pipelined form (on trial: "mla_decode_pipeline", model/kernel_trial.h)
// with key tiles of `keys` rows and `stages` of them in shared memory: 32 and 2 for every rank,
// also 32 and 3, 16 and 3, 16 and 4 for rank 512, which the benchmark compares. Row widths past
// rank + 64, or a shape not compiled, take the first form.
Tensor paged_mla_decode_pipelined(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& lens,
                                  int64_t block_size, int64_t key_start, int64_t latent_rank, double scale, int keys,
                                  int stages);

// The batch-invariant form (model/batch_invariant.h): row b reads its keys [0, lens[b]) through the
// flat table from table[starts[b]] on, and the keys are split at fixed positions (every 256 keys),
// whatever the batch, so that a row's result depends on its own keys alone: a decode step, a
// prefill and a training forward over whole sequences give it bit for bit. max_keys: at least the
// largest of lens (at most 65,536). Rows are launched in chunks: any count of rows. query_runs: the
// rows come in runs of one sequence's tokens (a prefill, a training forward): a block then serves
// four rows with one read of their keys, each row's result the same bits.
Tensor paged_mla_attention_invariant(const Tensor& q, const Tensor& cache, const Tensor& table, const Tensor& starts,
                                     const Tensor& lens, int64_t max_keys, int64_t block_size, int64_t latent_rank,
                                     double scale, bool query_runs = false);

}  // namespace grpo::model::cuda

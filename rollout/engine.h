// The rollout engine: n completions per prompt from the policy, with a paged KV cache.
//
// Cache. Each layer keeps, per token, what its attention module asks for (AttentionImpl, model/layers.h).
// For MLA, only what is needed to rebuild keys and values: the normalised kv latent (kv_lora_rank)
// and the rotated RoPE key (qk_rope_head_dim), 576 values a layer for DeepSeek-V2/V3; decoding runs
// in the absorbed form (kv_b_proj's key half folded into the query, its value half into the
// output), so attention reads the latent directly. For grouped-query attention, the rotated keys
// and the values of the key/value heads. Memory is a pool of fixed-size blocks (paged) under a byte budget;
// each sequence has a block table.
//
// Sharing. A prompt is prefilled once; its full blocks are shared by its n samples (refcounted),
// and only its last, partial block is copied into each sample's first own block.
//
// Scheduling (rollout/scheduler.h). Up to max_batch sequences decode together; a finished sequence frees its slot and
// blocks at once, and the next sample (of a prefilled prompt) or the next prompt takes them. A
// prompt is admitted when the cache can hold all of its samples at their longest, so that no
// sequence ever waits for memory or is evicted.
//
// Determinism. Sample s of prompt p draws its j-th token with a uniform number that depends only
// on (seed, p, s, j), by inverse-CDF over the filtered distribution. Outputs therefore do not
// depend on batch composition or scheduling (up to floating-point differences between batched
// and unbatched kernels).
//
// The engine uses the model's parameter tensors directly: in-process, it sees every optimizer
// step without a copy.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <vector>

#include "model/causal_lm.h"
#include "rollout/sampling.h"
#include "rollout/types.h"

namespace grpo::text {
class Tokenizer;
}

namespace grpo::rollout {

struct EngineOptions {
  int64_t max_samples = 1 << 16;      // n per request at most
  int64_t max_batch = 256;            // sequences decoded together
  int64_t block_size = 16;            // tokens per KV-cache block
  int64_t kv_cache_bytes = 0;         // pool size; 0 = 256 MiB on CPU, half the free memory on CUDA
  int64_t max_prefill_tokens = 8192;  // padded prompt tokens per prefill forward
  int64_t max_context = 0;            // 0 = the model's max_position_embeddings
  // On CUDA (with the grouped-GEMM MoE, i.e. bf16), replay the decode step as a CUDA graph per
  // (batch, block-table) size bucket instead of launching its kernels one by one.
  bool cuda_graphs = true;
  // Record the experts every MoE layer routed each token to (Completion::routed_experts), for
  // routing replay in training; CUDA graphs of the decode step carry them out with the logits.
  bool record_routing = false;
  // Speculative decoding with the model's first MTP module (DeepSeek-V3's multi-token prediction)
  // as the draft: each step the module proposes the next token, one forward of the policy checks it
  // and gives the token after it, and the acceptance rule (rollout/speculative.h) keeps every token
  // distributed exactly as the policy's sampling; log-probs are the policy's. The module keeps its
  // own cache layer. With the batch-invariant forward the policy's check runs through it, so the
  // log-probs still equal training's to the bit; the draft runs the ordinary kernels (it only
  // decides how many tokens a step keeps, never their distribution), so which tokens a seed draws
  // may then depend on the batch. With record_routing, the check's rows carry the records.
  bool speculative_mtp = false;
  // Drafts per speculative step (vLLM's name): the module is chained, each draft read back with the
  // module's own output standing in for the policy's hidden state; the check reads them all in one
  // forward and keeps a prefix, so a step gives 1 to num_speculative_tokens + 1 tokens.
  int64_t num_speculative_tokens = 1;
  // FP8 (e4m3) weights for the matrix products of the decoder layers (model/fp8.h: 128 x 128
  // block scales as DeepSeek-V3 ships them, per-row scales for the routed experts), kept beside
  // the policy's weights and requantized whenever weight_version changes (and before the first
  // step). The output projection stays in the model dtype, so log-probs come from the same head;
  // the drift from the bf16 policy is what the trainer's rollout_is correction is for. Runs the
  // FP8 kernels on Hopper GPUs with a bf16 model; on CPU an emulation of the same arithmetic (for
  // tests). Not with the batch-invariant forward.
  bool fp8 = false;
  // On CUDA, the ordinary forward's RMSNorm, RoPE, SwiGLU and the MoE's grouping and weighted
  // sum run as one fused kernel each (model/fused_kernels.h) instead of chains of ATen kernels:
  // fewer launches per decode step. Off gives the ATen kernels training runs (for comparison). The batch-invariant
  // forward has its own kernels and ignores this.
  bool fused_kernels = true;
  // With CUDA graphs (and neither speculative_mtp nor record_routing): each decode step is queued
  // before the host has seen the previous step's tokens, which it reads on the device, so the GPU
  // never waits while the host hands tokens to the scheduler and packs the next step's inputs
  // (vLLM's and SGLang's "async scheduling" / "overlap scheduler"). A sequence whose token in
  // flight ends it by length is left out of the next step; one that a stop token ends has run one
  // step too many, whose row is dropped. Tokens and log-probs are the synchronous loop's wherever
  // the batches are the same; the scheduler sees finished sequences a step later, so prompts
  // waiting for a slot may be admitted a step later.
  bool overlap_steps = true;
};

struct EngineStats {
  int64_t prefill_tokens = 0, prefill_calls = 0;
  int64_t decode_steps = 0, decode_tokens = 0;  // decode_tokens: sum of batch sizes over steps
  int64_t finished = 0;
  double prefill_seconds = 0, decode_seconds = 0, sample_seconds = 0;
  int64_t num_blocks = 0, peak_blocks_used = 0;
  int64_t routing_bytes = 0;  // routed-expert records handed out (record_routing), 2 bytes per index
  int64_t draft_tokens = 0, accepted_drafts = 0;  // speculative_mtp: drafts proposed (k a sequence and step) and kept
  int64_t fp8_bytes = 0, fp8_layers = 0, fp8_quantizations = 0;  // fp8: the copies' size, layers, refreshes
  double fp8_seconds = 0;                                         // fp8: time spent requantizing
};

class Engine {
 public:
  Engine(std::shared_ptr<model::CausalLM> model, const text::Tokenizer* tokenizer,
         EngineOptions options = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Throws grpo::Error saying what is wrong with the request (empty prompt, n < 1, negative
  // temperature, prompt not shorter than the context, ...). `where` names it in the message.
  void check(const Request& r, const std::string& where) const;
  // Queues a request (after check()); returns the id its completions will carry.
  uint64_t add(Request r, const std::string& where = "request");
  bool idle() const;
  // Drops a queued or running request: no more completions come for it, its cache blocks go back.
  bool cancel(uint64_t request_id);
  // One scheduling round: start waiting samples and prefill admitted prompts while slots and cache
  // allow, then one decode step of every running sequence. Returns the completions that finished.
  std::vector<Completion> step();
  // Runs `requests` to the end. `on_done` sees each completion as it finishes. Returns them in
  // request order, samples in order.
  std::vector<Completion> generate(const std::vector<Request>& requests,
                                   const std::function<void(const Completion&)>& on_done = {});

  int64_t max_context() const;
  const EngineStats& stats() const;
  // Sequences running and samples waiting for a slot; requests not yet prefilled.
  int64_t running() const;
  int64_t waiting() const;
  // KV-cache blocks held by prompts and sequences (0 when idle: nothing leaks).
  int64_t blocks_in_use() const;
  // Carried by completions that start after it is set (the trainer's step, a checkpoint version).
  int64_t weight_version = 0;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace grpo::rollout

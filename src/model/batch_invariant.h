// The batch-invariant forward: the decoder computed token by token through the kernels of
// model/invariant_kernels.h, so that a token's result depends on its own sequence alone, never on
// which other tokens share the call, how many they are, or whether the call is a training forward
// over whole sequences, a prefill or a decode step. The rollout engine and the trainer both run it
// when CausalLM::batch_invariant is set (recipe key `exact_rollout`), and the log-probs the engine
// returns then equal the training forward's to the last bit.
//
// It is the same model as the ordinary forward, rounded at the same places; the attention of MLA
// models is always in the absorbed form (queries folded into the latent, which the cache keeps),
// in training as in decoding. No autograd: CausalLM::completion_forward takes its values from
// here and its gradient from the ordinary forward, which imposes this forward's expert choices.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "model/causal_lm.h"
#include "model/invariant_kernels.h"

namespace grpo::model::invariant {

// The tokens of one call, flattened: their ids and positions, the cache row each writes its keys
// to, and the keys each attends to (itself last). A key layout whose max_keys is set is taken as
// valid and on the model's device (checked_keys' result, or the engine's own decode step inside a
// CUDA graph, where a host check cannot run); otherwise it is checked on the host.
struct TokenRows {
  Tensor ids;          // (N) int64
  Tensor positions;    // (N) int64
  Tensor write_slots;  // (N) int64
  KeyLayout keys;
  Tensor inv_freq;  // optional: rope_inv_freq(config) already on the model's device (no host copy)
};

// Runs the decoder over the rows. caches[l] (S, kv_cache_width) is layer l's cache (one tensor may
// serve every layer when the call holds whole sequences). Returns the final-norm hidden states
// (N, H) in the model dtype; `experts`, when given, receives each MoE layer's experts (N, k).
Tensor hidden_states(CausalLM& model, const TokenRows& rows, const std::vector<Tensor>& caches,
                     std::vector<Tensor>* experts = nullptr);

// Next-token log-probabilities (N, V) fp32 of hidden rows (N, H): the output projection rounded to
// the model dtype, then a fixed-order log-softmax.
Tensor next_token_logprobs(CausalLM& model, const Tensor& hidden);
// The logits themselves, (N, V) fp32 (rounded to the model dtype first).
Tensor logits(CausalLM& model, const Tensor& hidden);

// Training's view: log p(completion_i[j] | prompt_i, completion_i[<j]) for every completion token,
// flattened in sequence order (as CausalLM::completion_forward orders them), and each MoE layer's
// experts over the sequences' tokens (prompt + completion[:-1], flattened in sequence order).
struct CompletionValues {
  Tensor logprobs;              // (sum C_i) fp32
  std::vector<Tensor> experts;  // per MoE layer (tokens, k) int64
};
// The (tokens, V) log-probabilities are formed rows_per_chunk rows at a time (0: as many as make
// about 512 MB of fp32 logits), so that a mini-batch of 32k tokens of a 100k vocabulary does not
// hold 13 GB of them at once; each row's value is its own whatever the chunk.
CompletionValues completion_logprobs(CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                                     const std::vector<std::vector<int64_t>>& completions, int64_t rows_per_chunk = 0);

}  // namespace grpo::model::invariant

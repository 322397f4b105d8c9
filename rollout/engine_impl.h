// The rollout engine's insides (rollout/engine.h), private to the engine's sources: engine.cpp
// (prefill, plain decode steps, the public interface) and speculative_decode.cpp (decode steps
// with the MTP module's drafts).
#pragma once

#include <c10/core/Event.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>

#include "model/batch_invariant.h"
#include "model/fp8.h"
#include "rollout/decode_graphs.h"
#include "rollout/engine.h"
#include "rollout/scheduler.h"
#include "rollout/speculative.h"
#include "text/tokenizer.h"
#include "util/error.h"

namespace grpo::rollout {

using at::Tensor;
using model::DecoderLayer;

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

struct Engine::Impl {
  std::shared_ptr<model::CausalLM> model;
  const text::Tokenizer* tokenizer;
  EngineOptions opt;
  ModelConfig cfg;
  int64_t L = 0, D = 0, bs = 0, num_blocks = 0, ctx = 0;
  Tensor pool;  // (L, num_blocks * bs, D): each token slot's cache row (ModelConfig::kv_cache_width)
  std::unique_ptr<Scheduler> sched;
  std::unordered_map<uint64_t, Tensor> prompt_logits;  // group id -> (V) fp32 next-token logits after the prompt
  EngineStats stats;
  // CUDA graphs of the decode step (rollout/decode_graphs.h); padded rows read and write only
  // `dummy_block`, which the scheduler's block pool never hands out.
  bool use_graphs = false;
  int32_t dummy_block = -1;
  std::unique_ptr<DecodeGraphs> graphs;
  int64_t* weight_version = nullptr;
  // The model's batch-invariant forward (model/batch_invariant.h) serves prefill and decode, and
  // the returned log-probs are its fixed-order log-softmax: what training computes, to the bit.
  bool invariant = false;
  // FP8 copies of the weights (EngineOptions::fp8), last filled by a step at weight_version
  // `fp8_version` (none yet: the first step fills them).
  bool fp8 = false;
  bool fused = true;  // fused kernels in the ordinary forwards (EngineOptions::fused_kernels)
  std::optional<int64_t> fp8_version;
  void refresh_fp8();
  // Speculative decoding with the MTP module (EngineOptions::speculative_mtp). Its cache is layer L
  // of the pool, and its row for position i (the main model's hidden state at i with the token at
  // i + 1) sits in the slot of position i + 1, so that a prompt's rows are the same for every sample
  // and sit in the prompt's shared blocks. `pending` holds, per running sequence, the rows whose
  // tokens are known but which the module has not read yet; `prompt_hidden` the prompt's last
  // hidden state until each of its samples has its first row.
  bool spec = false;
  struct Pending {
    int64_t first_position = 0;   // of the first row
    Tensor hidden;                // (rows, H) main final-norm hidden states, model dtype
    std::vector<int64_t> tokens;  // the token at position + 1 of each row
  };
  std::unordered_map<const Sequence*, Pending> pending;
  std::unordered_map<uint64_t, Tensor> prompt_hidden;
  // With CUDA graphs the module's forward is replayed too: its hidden-state input lives in
  // `mtp_hidden` (rows x H, the most rows a call can have: k + 1 pending rows a sequence), which
  // the graphs read in place.
  std::unique_ptr<DecodeGraphs> mtp_graphs;
  Tensor mtp_hidden;

  Impl(std::shared_ptr<model::CausalLM> m, const text::Tokenizer* tok, EngineOptions o);

  void check(const Request& r, const std::string& where) const;

  // --- prefill -------------------------------------------------------------------------------
  void prefill(const std::vector<Group*>& batch);

  // The MTP module's cache rows of the prompt tokens whose next token is known: row i (hidden state
  // at i, token i + 1) for i < P - 1, into the slot of position i + 1.
  void prefill_mtp(const std::vector<Group*>& batch, const Tensor& input, const Tensor& h, int64_t T);

  // Prefill through the batch-invariant forward: every prompt token writes its cache rows and
  // attends to its prompt's earlier slots through the group's block table.
  void prefill_invariant(const std::vector<Group*>& batch);

  model::invariant::TokenRows invariant_rows(const std::vector<int64_t>& ids, const std::vector<int64_t>& pos,
                                             const std::vector<int64_t>& slots, const std::vector<int64_t>& table,
                                             const std::vector<int64_t>& start, const std::vector<int64_t>& count) const;

  // One decode step through the batch-invariant forward, from the packed input decode_forward
  // reads: (B, V) fp32 logits, followed with record_routing by the experts' columns, as
  // decode_forward returns them. No host synchronisation: CUDA graphs hold it too (a padded row's
  // values never reach a real row's).
  Tensor decode_invariant(const Tensor& packed, int64_t B, int64_t nblk);
  // The decoder layers' caches, one per layer (the MTP module's layer L left out).
  std::vector<Tensor> main_caches() const { return pool.narrow(0, 0, L).unbind(0); }
  Tensor inv_freq;  // the rotary frequencies on the model's device, for decode_invariant

  // Each MoE layer's experts (N, k) as int16 on the host, token-major: (N, MoE layers, k).
  static std::vector<int16_t> host_experts(const std::vector<Tensor>& experts);

  // --- samples -------------------------------------------------------------------------------
  // Starts waiting samples of prefilled prompts while slots are free; their first token comes
  // from the prompt's logits.
  void start_samples(std::vector<Completion>& done);

  // The sampling settings of `seqs` for the token each draws next: its temperature, top-k, top-p
  // and uniform number, keyed by the token's index (the tokens it holds, plus ahead[b] where given:
  // 1 for a token still in flight).
  struct RowSampling {
    std::vector<float> temp, topp, u;
    std::vector<int64_t> topk;
  };
  static RowSampling row_sampling(const std::vector<Sequence*>& seqs, const std::vector<int64_t>& ahead = {});

  // Samples one token per row of `logits` and hands them to the scheduler.
  void sample_and_advance(const Tensor& logits, const std::vector<Sequence*>& seqs, const RowSampling& rs,
                          std::vector<Completion>& done);

  // Starts samples, then prefills admitted prompts and starts theirs, while slots and cache allow.
  void admit(std::vector<Completion>& done);

  // --- decode --------------------------------------------------------------------------------
  // The decode forward for a batch of B rows whose inputs are packed in one int64 device tensor:
  // [tokens (B) | positions (B) | write slots (B) | lengths (B) | block tables (B, nblk)].
  // Returns next-token logits (B, V) fp32, followed with record_routing by each MoE layer's experts
  // as fp32 columns (B, MoE layers x k), and with speculative decoding by the final-norm hidden
  // states (B, H) as fp32 columns, so that one static graph output carries them all. Free of host
  // synchronisation, so a CUDA graph can hold it.
  Tensor decode_forward(const Tensor& packed, int64_t B, int64_t nblk);

  // A decode forward's inputs, unpacked: B rows, each reading the cache through its block table.
  // Keys are read from position key_start on.
  struct PagedRows {
    Tensor tokens, positions;  // (B)
    model::PagedKV kv;
  };
  PagedRows unpack(const Tensor& packed, int64_t B, int64_t nblk, int64_t key_start = 0) const;
  // Writes row r of such a packed input on the host (`rows` rows, block tables of nblk): `token`
  // at `position`, its cache row into slot `write_slot`, `length` slots read, and s's block table.
  static void pack_row(std::vector<int64_t>& packed, int64_t rows, int64_t nblk, int64_t r, const Sequence& s,
                       int64_t token, int64_t position, int64_t write_slot, int64_t length);

  // The MTP module over packed rows (as decode_forward's; a row's length counts the slots it reads)
  // given the hidden states h (R, H) it combines with the rows' tokens: writes its cache rows into
  // layer L of the pool and returns (R, V + H) fp32, its next-token logits and its own output (a
  // chained draft's stand-in for the policy's hidden state). Position 0's slot holds no MTP row.
  Tensor mtp_forward(const Tensor& packed, int64_t R, int64_t nblk, const Tensor& h);

  void decode(std::vector<Completion>& done);

  // Overlapped decode (EngineOptions::overlap_steps): the step in flight, queued on the device
  // but not yet handed to the scheduler. `tokens` are its sampled tokens on the device (the next
  // step reads them there); `host` (2, rows) pinned: tokens and log-probs, copied once `ready`.
  // A row counts only if its sequence still runs with the same serial: one that ended (a stop
  // token, a cancel) drops it, and its pointer is never followed.
  struct Flight {
    std::vector<Sequence*> seqs;
    std::vector<uint64_t> serials;
    Tensor tokens, host;
    c10::Event ready{c10::DeviceType::CUDA};
  };
  std::unique_ptr<Flight> flight;
  bool overlap = false;
  // Queues the next step of every running sequence (reading the tokens in flight on the device),
  // then waits for the step in flight and hands its tokens to the scheduler.
  void decode_overlapped(std::vector<Completion>& done);

  int64_t slot(const Sequence& s, int64_t position) const;

  // One speculative step of every running sequence, whose last token t_n sits at position n: the
  // MTP module drafts k = num_speculative_tokens tokens (the first from its pending rows, each next
  // one from the draft before it), the policy reads t_n and the drafts in one forward, and the
  // acceptance rule keeps a prefix of the drafts plus one token of the policy's: 1 to k + 1 tokens.
  void decode_speculative(std::vector<Completion>& done);
};

}  // namespace grpo::rollout

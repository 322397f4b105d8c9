// The rollout engine's scheduler: which prompts are prefilled, which samples run, when each one
// ends and what it gives back. Torch-free: it deals in token ids, block indices and counts; the
// engine (rollout/engine.cpp) runs the forwards it asks for.
//
// A prompt with n samples is a Group. It waits until the cache can hold all its samples at their
// longest (BlockPool::reserve), then is prefilled once: its full prompt blocks are shared by every
// sample, and its last, partial block is copied into each sample's first own block. Samples start
// while decode slots (max_batch) are free; each Sequence grows into its group's reserved blocks
// one at a time and, when it ends, gives back what it took and what it never used. A group's
// shared blocks go back when its last sample ends.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <vector>

#include "rollout/block_pool.h"
#include "rollout/types.h"

namespace grpo::text {
class Tokenizer;
}

namespace grpo::rollout {

struct Group {  // one prompt and its n samples
  uint64_t id = 0;
  Request req;
  int64_t max_new = 0;                // after clamping to the context
  int64_t own_blocks_per_sample = 0;  // blocks a sample may take beyond the shared prompt blocks
  std::vector<int32_t> blocks;        // floor(P/bs) full prompt blocks, then the partial one if any
  int64_t started = 0, unfinished = 0;
  int64_t weight_version = 0;         // at admission
  std::vector<int16_t> prompt_routing;  // experts of the prompt tokens, when the engine records them
  int64_t prompt_len() const { return (int64_t)req.prompt_ids.size(); }
  bool all_started() const { return started == req.params.n; }
};

struct Sequence {  // one sample of a group
  Group* group = nullptr;
  int64_t sample = 0;
  uint64_t serial = 0;  // unique in its scheduler: tells a sequence from a later one at the same address
  std::vector<int32_t> table;  // block table: shared full prompt blocks, then own blocks
  int64_t reserved = 0;        // own blocks still reserved, not yet taken
  std::vector<int64_t> tokens;
  std::vector<float> logprobs;
  std::vector<int16_t> routing;  // experts of the tokens fed back, when the engine records them
  // Where the last token goes in the cache when it is fed back (prompt + tokens - 1).
  int64_t position() const { return group->prompt_len() + (int64_t)tokens.size() - 1; }
};

struct SchedulerLimits {
  int64_t max_batch = 256;            // sequences decoded together
  int64_t max_prefill_tokens = 8192;  // padded prompt tokens (longest x prompts) per prefill
  int64_t block_size = 16;
  int64_t max_context = 0;            // prompt + completion
  int64_t lookahead = 0;              // cache rows a sample writes past its last fed-back token (drafts)
};

// A block the engine must copy before the sequence's first decode step: the prompt's partial block.
struct BlockCopy {
  int32_t from = 0, to = 0;
};

class Scheduler {
 public:
  Scheduler(SchedulerLimits limits, int64_t usable_blocks, const text::Tokenizer* tokenizer);

  // Throws grpo::Error (starting with `where`) when `r` cannot run: an empty prompt, token ids
  // outside the vocabulary, sampling settings out of range, more than `max_samples` samples, a
  // prompt that leaves no room in the context, stop strings without a tokenizer, or more blocks
  // than the whole cache holds.
  void check(const Request& r, int64_t vocab_size, int64_t max_samples, const std::string& where) const;
  // Blocks a request needs at admission (prompt blocks plus every sample's own blocks at its
  // longest); INT64_MAX when that does not fit in 64 bits.
  int64_t blocks_needed(const Request& r) const;
  int64_t max_new_tokens(const Request& r) const;  // clamped to the context
  // Queues a request (checked by the caller); returns its id.
  uint64_t add(Request r);

  // Admission: the waiting prompts to prefill together next, in arrival order, with their prompt
  // blocks taken and their samples' blocks reserved, while their samples fit the free slots, the
  // cache and max_prefill_tokens. Empty when nothing can be admitted now.
  std::vector<Group*> admit(int64_t weight_version);
  // Samples of prefilled prompts to start now, while slots are free, with the partial-block copies
  // they need. They are not running until their first token is recorded with advance().
  std::vector<Sequence*> start_samples(std::vector<BlockCopy>* copies);
  // Gives every running sequence the block its next cache write lands in, and the ones of the
  // `ahead` writes after it (speculative decoding writes a draft token's rows too).
  void grow(int64_t ahead = 0);
  // The same for one running sequence (an overlapped step writes one row past a token in flight).
  void grow(Sequence& s, int64_t ahead);
  // Records one sampled token (and its log-probability) for each of `seqs`, which are either the
  // running sequences in order or the ones start_samples just returned. Finished sequences become
  // completions in `done` and give their blocks back; the rest run.
  void advance(const std::vector<Sequence*>& seqs, const std::vector<int64_t>& tokens,
               const std::vector<float>& logprobs, std::vector<Completion>& done);
  // The same with several tokens per sequence (speculative decoding), recorded in order until the
  // sequence ends; the ones after its end are dropped.
  void advance(const std::vector<Sequence*>& seqs, const std::vector<std::vector<int64_t>>& tokens,
               const std::vector<std::vector<float>>& logprobs, std::vector<Completion>& done);

  // Drops a request: waiting, its samples not started, and its running sequences (no completion);
  // their blocks go back. False when no such request is queued or running.
  bool cancel(uint64_t id);

  const std::vector<Sequence*>& running() const { return running_view_; }
  int64_t waiting_prompts() const { return (int64_t)waiting_.size(); }
  int64_t unstarted_samples() const;
  bool idle() const { return waiting_.empty() && prefilled_.empty() && running_.empty(); }
  const BlockPool& blocks() const { return blocks_; }
  int64_t finished() const { return finished_; }

 private:
  int64_t blocks_for(int64_t tokens) const { return (tokens + limits_.block_size - 1) / limits_.block_size; }
  int64_t own_blocks(int64_t prompt_len, int64_t max_new) const;
  // Appends a token; true (with the reason) when the sequence is finished.
  bool append(Sequence& s, int64_t token, float logprob, FinishReason* why) const;
  Completion finish(Sequence& s, FinishReason why);
  void release_if_done(Group* g);
  void sync_running_view();

  SchedulerLimits limits_;
  BlockPool blocks_;
  const text::Tokenizer* tokenizer_;
  int64_t tokenizer_vocab_ = 0;
  uint64_t next_id_ = 1;
  uint64_t next_serial_ = 1;
  int64_t finished_ = 0;
  std::deque<std::unique_ptr<Group>> waiting_;   // not prefilled
  std::list<std::unique_ptr<Group>> prefilled_;  // prefilled, some samples not finished
  std::vector<std::unique_ptr<Sequence>> starting_;  // returned by start_samples, first token pending
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<Sequence*> running_view_;
};

}  // namespace grpo::rollout

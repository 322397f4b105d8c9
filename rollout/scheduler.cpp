#include "rollout/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "text/tokenizer.h"
#include "util/error.h"

namespace grpo::rollout {

Scheduler::Scheduler(SchedulerLimits limits, int64_t usable_blocks, const text::Tokenizer* tokenizer)
    : limits_(limits), blocks_(usable_blocks), tokenizer_(tokenizer) {
  if (limits_.max_batch < 1) throw Error("rollout engine: max_batch must be >= 1");
  if (limits_.block_size < 1) throw Error("rollout engine: block_size must be >= 1");
  if (tokenizer_) tokenizer_vocab_ = tokenizer_->vocab_size();
}

int64_t Scheduler::max_new_tokens(const Request& r) const {
  return std::min<int64_t>(r.params.max_new_tokens, limits_.max_context - (int64_t)r.prompt_ids.size());
}

int64_t Scheduler::own_blocks(int64_t prompt_len, int64_t max_new) const {
  // A sample's cache holds at most P + max_new - 1 tokens (its last token is never fed back), and
  // the rows of the drafts it checks beyond them.
  return blocks_for(prompt_len + max_new - 1 + limits_.lookahead) - prompt_len / limits_.block_size;
}

void Scheduler::check(const Request& r, int64_t vocab_size, int64_t max_samples, const std::string& where) const {
  const auto& p = r.params;
  const int64_t P = (int64_t)r.prompt_ids.size(), ctx = limits_.max_context;
  auto fail = [&](const std::string& what) { throw Error(where + ": " + what); };
  if (P == 0) fail("empty prompt");
  for (int64_t t : r.prompt_ids)
    if (t < 0 || t >= vocab_size)
      fail("prompt token id " + std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(vocab_size) + ")");
  if (p.n < 1) fail("n must be at least 1 (got " + std::to_string(p.n) + ")");
  if (p.n > max_samples)
    fail("n = " + std::to_string(p.n) + " is more than the " + std::to_string(max_samples) +
         " samples a request may ask for");
  if (!(p.temperature >= 0) || std::isinf(p.temperature))
    fail("temperature must be a finite number >= 0 (got " + std::to_string(p.temperature) + ")");
  if (!(p.top_p > 0 && p.top_p <= 1)) fail("top_p must be in (0, 1] (got " + std::to_string(p.top_p) + ")");
  if (p.top_k < 0) fail("top_k must be >= 0 (got " + std::to_string(p.top_k) + ")");
  if (p.max_new_tokens < 1) fail("max_new_tokens must be at least 1 (got " + std::to_string(p.max_new_tokens) + ")");
  if (P >= ctx)
    fail("prompt of " + std::to_string(P) + " tokens does not fit the context of " + std::to_string(ctx) +
         " tokens (at least one new token must fit)");
  for (int64_t t : p.stop_token_ids)
    if (t < 0 || t >= vocab_size) fail("stop token id " + std::to_string(t) + " is outside the vocabulary");
  for (const auto& s : p.stop_strings) {
    if (s.empty()) fail("empty stop string");
    if (!tokenizer_) fail("stop strings need a tokenizer (the model directory has no tokenizer.json)");
  }
  const int64_t need = blocks_needed(r), usable = blocks_.usable();
  if (need > usable)
    fail("needs " + std::to_string(need) + " KV-cache blocks for its " + std::to_string(p.n) +
         " samples, more than the " + std::to_string(usable) + " the cache budget holds");
}

int64_t Scheduler::blocks_needed(const Request& r) const {
  const int64_t P = (int64_t)r.prompt_ids.size();
  int64_t own = 0, total = 0;
  if (__builtin_mul_overflow(r.params.n, own_blocks(P, max_new_tokens(r)), &own) ||
      __builtin_add_overflow(own, blocks_for(P), &total))
    return std::numeric_limits<int64_t>::max();
  return total;
}

uint64_t Scheduler::add(Request r) {
  auto g = std::make_unique<Group>();
  g->id = next_id_++;
  g->max_new = max_new_tokens(r);
  g->own_blocks_per_sample = own_blocks((int64_t)r.prompt_ids.size(), g->max_new);
  g->unfinished = r.params.n;
  g->req = std::move(r);
  uint64_t id = g->id;
  waiting_.push_back(std::move(g));
  return id;
}

int64_t Scheduler::unstarted_samples() const {
  int64_t n = 0;
  for (auto& g : prefilled_) n += g->req.params.n - g->started;
  return n;
}

std::vector<Group*> Scheduler::admit(int64_t weight_version) {
  std::vector<Group*> batch;
  int64_t free_slots = limits_.max_batch - (int64_t)running_.size() - unstarted_samples();
  int64_t longest = 0;
  while (!waiting_.empty() && free_slots > 0) {
    Group* g = waiting_.front().get();
    const int64_t P = g->prompt_len(), n = g->req.params.n;
    if (blocks_for(P) + n * g->own_blocks_per_sample > blocks_.available()) break;
    const int64_t padded = std::max(longest, P);
    if (!batch.empty() && padded * (int64_t)(batch.size() + 1) > limits_.max_prefill_tokens) break;
    longest = padded;
    for (int64_t i = 0; i < blocks_for(P); ++i) g->blocks.push_back(blocks_.take());
    blocks_.reserve(n * g->own_blocks_per_sample);
    g->weight_version = weight_version;
    free_slots -= n;
    batch.push_back(g);
    prefilled_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  return batch;
}

std::vector<Sequence*> Scheduler::start_samples(std::vector<BlockCopy>* copies) {
  if (!starting_.empty()) throw Error("rollout scheduler: samples started twice without their first token");
  const int64_t bs = limits_.block_size;
  std::vector<Sequence*> fresh;
  for (auto& gp : prefilled_) {
    Group* g = gp.get();
    const int64_t P = g->prompt_len();
    while (!g->all_started() && (int64_t)(running_.size() + starting_.size()) < limits_.max_batch) {
      auto s = std::make_unique<Sequence>();
      s->group = g;
      s->sample = g->started++;
      s->serial = next_serial_++;
      s->reserved = g->own_blocks_per_sample;
      s->table.assign(g->blocks.begin(), g->blocks.begin() + P / bs);
      if (P % bs) {  // the partial prompt block: each sample writes on into a copy of its own
        int32_t own = blocks_.take_reserved();
        s->reserved -= 1;
        copies->push_back({g->blocks.back(), own});
        s->table.push_back(own);
      }
      fresh.push_back(s.get());
      starting_.push_back(std::move(s));
    }
  }
  return fresh;
}

void Scheduler::grow(int64_t ahead) {
  for (auto& s : running_) grow(*s, ahead);
}

void Scheduler::grow(Sequence& s, int64_t ahead) {
  while ((s.position() + ahead) / limits_.block_size >= (int64_t)s.table.size()) {
    if (s.reserved <= 0)
      throw Error("rollout scheduler: a sequence needs a cache block beyond its reservation (position " +
                  std::to_string(s.position() + ahead) + ")");
    s.table.push_back(blocks_.take_reserved());
    s.reserved -= 1;
  }
}

bool Scheduler::append(Sequence& s, int64_t token, float logprob, FinishReason* why) const {
  s.tokens.push_back(token);
  s.logprobs.push_back(logprob);
  const auto& p = s.group->req.params;
  if (std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), token) != p.stop_token_ids.end()) {
    *why = FinishReason::Stop;
    return true;
  }
  if (!p.stop_strings.empty()) {
    size_t longest = 0;
    for (const auto& st : p.stop_strings) longest = std::max(longest, st.size());
    // Byte-level BPE tokens are at least one byte each: the last `longest` bytes lie in the last
    // `longest` tokens. Two more tokens keep a split UTF-8 character away from the match.
    size_t w = std::min(s.tokens.size(), longest + 2);
    std::vector<int32_t> tail;
    for (auto it = s.tokens.end() - w; it != s.tokens.end(); ++it)
      if (*it < tokenizer_vocab_) tail.push_back((int32_t)*it);
    std::string text = tokenizer_->decode(tail);
    for (const auto& st : p.stop_strings)
      if (text.find(st) != std::string::npos) {
        *why = FinishReason::Stop;
        return true;
      }
  }
  if ((int64_t)s.tokens.size() >= s.group->max_new) {
    *why = FinishReason::Length;
    return true;
  }
  return false;
}

Completion Scheduler::finish(Sequence& s, FinishReason why) {
  Group& g = *s.group;
  Completion c;
  c.request_id = g.id;
  c.prompt_index = g.req.prompt_index;
  c.sample_index = s.sample;
  c.token_ids = std::move(s.tokens);
  c.logprobs = std::move(s.logprobs);
  c.finish_reason = why;
  c.weight_version = g.weight_version;
  if (!g.prompt_routing.empty()) {
    // A speculative step reads a kept draft before it knows whether the sequence ends there: the
    // records of tokens past token_ids[:-1] are dropped.
    const size_t per_token = g.prompt_routing.size() / g.prompt_len();
    const size_t read = c.token_ids.empty() ? 0 : (c.token_ids.size() - 1) * per_token;
    if (s.routing.size() > read) s.routing.resize(read);
    c.routed_experts.reserve(g.prompt_routing.size() + s.routing.size());
    c.routed_experts = g.prompt_routing;
    c.routed_experts.insert(c.routed_experts.end(), s.routing.begin(), s.routing.end());
  }
  if (tokenizer_) {
    // Ids past the tokenizer's vocabulary (checkpoints pad their embedding matrix) have no text.
    std::vector<int32_t> ids;
    for (int64_t t : c.token_ids)
      if (t < tokenizer_vocab_) ids.push_back((int32_t)t);
    const auto& stops = g.req.params.stop_token_ids;
    if (!c.token_ids.empty() && !ids.empty() && ids.back() == c.token_ids.back() &&
        std::find(stops.begin(), stops.end(), ids.back()) != stops.end())
      ids.pop_back();
    c.text = tokenizer_->decode(ids);
  }
  // Own blocks back to the pool; the shared prompt blocks when the group's last sample is done.
  const int64_t shared = g.prompt_len() / limits_.block_size;
  for (size_t i = shared; i < s.table.size(); ++i) blocks_.release(s.table[i]);
  blocks_.unreserve(s.reserved);
  g.unfinished -= 1;
  finished_ += 1;
  return c;
}

void Scheduler::release_if_done(Group* g) {
  const int64_t P = g->prompt_len(), bs = limits_.block_size;
  if (g->all_started() && (P % bs) != 0 && (int64_t)g->blocks.size() > P / bs) {
    blocks_.release(g->blocks.back());  // the partial block: every sample has its copy
    g->blocks.pop_back();
  }
  if (g->all_started() && g->unfinished == 0) {
    for (int32_t b : g->blocks) blocks_.release(b);
    g->blocks.clear();
    prefilled_.remove_if([g](const std::unique_ptr<Group>& x) { return x.get() == g; });
  }
}

void Scheduler::advance(const std::vector<Sequence*>& seqs, const std::vector<int64_t>& tokens,
                        const std::vector<float>& logprobs, std::vector<Completion>& done) {
  if (tokens.size() != seqs.size() || logprobs.size() != seqs.size())
    throw Error("rollout scheduler: " + std::to_string(seqs.size()) + " sequences but " +
                std::to_string(tokens.size()) + " tokens");
  std::vector<std::vector<int64_t>> t(seqs.size());
  std::vector<std::vector<float>> lp(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    t[i] = {tokens[i]};
    lp[i] = {logprobs[i]};
  }
  advance(seqs, t, lp, done);
}

void Scheduler::advance(const std::vector<Sequence*>& seqs, const std::vector<std::vector<int64_t>>& tokens,
                        const std::vector<std::vector<float>>& logprobs, std::vector<Completion>& done) {
  if (tokens.size() != seqs.size() || logprobs.size() != seqs.size())
    throw Error("rollout scheduler: " + std::to_string(seqs.size()) + " sequences but " +
                std::to_string(tokens.size()) + " token lists");
  std::vector<Sequence*> ended;
  std::vector<Group*> touched;  // each once, in order; released only after every append
  for (size_t i = 0; i < seqs.size(); ++i) {
    Group* g = seqs[i]->group;
    if (std::find(touched.begin(), touched.end(), g) == touched.end()) touched.push_back(g);
    if (tokens[i].empty() || tokens[i].size() != logprobs[i].size())
      throw Error("rollout scheduler: sequence " + std::to_string(i) + " gets " + std::to_string(tokens[i].size()) +
                  " tokens and " + std::to_string(logprobs[i].size()) + " log-probs");
    FinishReason why;
    bool finished = false;
    for (size_t j = 0; j < tokens[i].size() && !finished; ++j) finished = append(*seqs[i], tokens[i][j], logprobs[i][j], &why);
    if (!finished) continue;
    done.push_back(finish(*seqs[i], why));
    ended.push_back(seqs[i]);
  }
  auto is_ended = [&](const std::unique_ptr<Sequence>& s) {
    return std::find(ended.begin(), ended.end(), s.get()) != ended.end();
  };
  running_.erase(std::remove_if(running_.begin(), running_.end(), is_ended), running_.end());
  for (auto& s : starting_)
    if (!is_ended(s)) running_.push_back(std::move(s));
  starting_.clear();
  // A group whose samples all started no longer needs its partial prompt block; one whose samples
  // all ended gives back its shared blocks and is gone.
  for (Group* g : touched) release_if_done(g);
  sync_running_view();
}

bool Scheduler::cancel(uint64_t id) {
  if (!starting_.empty()) throw Error("rollout scheduler: cancel while samples are starting");
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
    if ((*it)->id == id) {
      waiting_.erase(it);
      return true;
    }
  Group* g = nullptr;
  for (auto& gp : prefilled_)
    if (gp->id == id) g = gp.get();
  if (!g) return false;
  const int64_t unstarted = g->req.params.n - g->started;
  blocks_.unreserve(unstarted * g->own_blocks_per_sample);
  g->started = g->req.params.n;
  g->unfinished -= unstarted;
  const int64_t shared = g->prompt_len() / limits_.block_size;
  auto dropped = [&](const std::unique_ptr<Sequence>& s) {
    if (s->group != g) return false;
    for (size_t i = shared; i < s->table.size(); ++i) blocks_.release(s->table[i]);
    blocks_.unreserve(s->reserved);
    g->unfinished -= 1;
    return true;
  };
  running_.erase(std::remove_if(running_.begin(), running_.end(), dropped), running_.end());
  release_if_done(g);
  sync_running_view();
  return true;
}

void Scheduler::sync_running_view() {
  running_view_.clear();
  for (auto& s : running_) running_view_.push_back(s.get());
}

}  // namespace grpo::rollout

#include "rollout/engine.h"

#include <ATen/ops/searchsorted.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <list>
#include <map>
#include <string>
#include <unordered_set>

#include "rollout/block_pool.h"
#include "rollout/decode_graphs.h"
#include "text/tokenizer.h"
#include "util/error.h"

namespace grpo::rollout {

using at::Tensor;
using model::DecoderLayer;
using model::MLAImpl;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

float sample_uniform(uint64_t seed, int64_t prompt_index, int64_t sample_index, int64_t j) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ static_cast<uint64_t>(prompt_index));
  h = splitmix64(h ^ static_cast<uint64_t>(sample_index));
  h = splitmix64(h ^ static_cast<uint64_t>(j));
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);  // 24 bits: exact in fp32, < 1
}

std::pair<Tensor, Tensor> sample_tokens(const Tensor& logits, const std::vector<float>& temperature,
                                        const std::vector<int64_t>& top_k, const std::vector<float>& top_p,
                                        const std::vector<float>& uniform) {
  const int64_t B = logits.size(0), V = logits.size(1);
  const auto dev = logits.device();
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  // Per-row settings, packed into one host->device copy.
  std::vector<float> packed(4 * B);
  bool filter = false, any_greedy = false;
  for (int64_t b = 0; b < B; ++b) {
    bool greedy = temperature[b] == 0;
    any_greedy |= greedy;
    int64_t k = top_k[b] > 0 && top_k[b] < V ? top_k[b] : V;
    filter |= !greedy && (k < V || top_p[b] < 1);
    packed[b] = greedy ? 1.0f : temperature[b];
    packed[B + b] = static_cast<float>(k);
    packed[2 * B + b] = top_p[b];
    packed[3 * B + b] = uniform[b];
  }
  Tensor settings = at::from_blob(packed.data(), {4, B, 1}, f32).to(dev);
  Tensor temp = settings[0], kk = settings[1], pp = settings[2], u = settings[3];

  Tensor logp = logits.log_softmax(-1);
  Tensor probs = (logits / temp).softmax(-1);
  Tensor token;
  if (filter) {
    // Sort descending; keep the top k, then the smallest prefix whose mass before each kept token
    // is below top_p of the top-k mass (transformers' and vLLM's order: temperature, top-k, top-p).
    auto sorted = probs.sort(-1, /*descending=*/true);
    Tensor sp = std::get<0>(sorted), si = std::get<1>(sorted);
    Tensor rank = at::arange(V, f32.device(dev)).unsqueeze(0);
    sp = sp * (rank < kk);
    Tensor before = sp.cumsum(-1) - sp;
    sp = sp * ((before < pp * sp.sum(-1, true)) | (rank == 0));
    Tensor cdf = sp.cumsum(-1);
    Tensor pick = at::searchsorted(cdf, u * cdf.narrow(1, V - 1, 1), false, /*right=*/true).clamp_max(V - 1);
    // Rounding can put the target at the very end of the CDF: fall back to the most likely token.
    pick = at::where(sp.gather(1, pick) > 0, pick, at::zeros_like(pick));
    token = si.gather(1, pick);
  } else {
    Tensor cdf = probs.cumsum(-1);
    Tensor pick = at::searchsorted(cdf, u * cdf.narrow(1, V - 1, 1), false, /*right=*/true).clamp_max(V - 1);
    token = at::where(probs.gather(1, pick) > 0, pick, probs.argmax(-1, true));
  }
  if (any_greedy) {
    std::vector<uint8_t> g(B);
    for (int64_t b = 0; b < B; ++b) g[b] = temperature[b] == 0;
    Tensor greedy = at::from_blob(g.data(), {B, 1}, at::TensorOptions().dtype(at::kBool)).to(dev);
    token = at::where(greedy, logits.argmax(-1, true), token);
  }
  Tensor lp = logp.gather(1, token);
  return {token.squeeze(1), lp.squeeze(1)};
}

// ---------------------------------------------------------------------------------------------
struct Engine::Impl {
  struct Group {  // one prompt and its n samples
    uint64_t id = 0;
    Request req;
    int64_t max_new = 0;               // after clamping to the context
    int64_t own_blocks_per_sample = 0;
    std::vector<int32_t> blocks;       // floor(P/bs) full prompt blocks, then the partial one if any
    int64_t started = 0, unfinished = 0;
    Tensor last_logits;                // (V) fp32: next-token logits after the prompt
    int64_t version = 0;
  };
  struct Seq {
    Group* group = nullptr;
    int64_t sample = 0;
    std::vector<int32_t> table;        // block table: shared full prompt blocks, then own blocks
    int64_t reserved = 0;              // own blocks still reserved, not yet taken
    std::vector<int64_t> tokens;
    std::vector<float> logprobs;
  };

  std::shared_ptr<model::DeepseekForCausalLM> model;
  const text::Tokenizer* tokenizer;
  EngineOptions opt;
  ModelConfig cfg;
  int64_t L = 0, D = 0, bs = 0, num_blocks = 0, ctx = 0;
  int64_t tokenizer_vocab = 0;
  Tensor pool;  // (L, num_blocks * bs, D): [kv latent | rope key] per token slot
  std::unique_ptr<BlockPool> blocks;  // the cache's blocks but the graphs' dummy one
  uint64_t next_id = 1;
  std::deque<std::unique_ptr<Group>> waiting;    // not prefilled
  std::list<std::unique_ptr<Group>> prefilled;   // prefilled, some samples not finished
  std::vector<std::unique_ptr<Seq>> running;
  EngineStats stats;
  // CUDA graphs of the decode step (rollout/decode_graphs.h); padded rows read and write only
  // `dummy_block`, which the block pool never hands out.
  bool use_graphs = false;
  int32_t dummy_block = -1;
  std::unique_ptr<DecodeGraphs> graphs;
  int64_t* weight_version = nullptr;

  int64_t blocks_for(int64_t tokens) const { return (tokens + bs - 1) / bs; }
  int64_t unstarted() const {
    int64_t n = 0;
    for (auto& g : prefilled) n += g->req.params.n - g->started;
    return n;
  }

  Impl(std::shared_ptr<model::DeepseekForCausalLM> m, const text::Tokenizer* tok, EngineOptions o)
      : model(std::move(m)), tokenizer(tok), opt(o), cfg(model->config()) {
    if (opt.max_batch < 1) throw Error("rollout engine: max_batch must be >= 1");
    if (tokenizer) tokenizer_vocab = tokenizer->vocab_size();
    if (opt.block_size < 1) throw Error("rollout engine: block_size must be >= 1");
    L = cfg.num_hidden_layers;
    D = cfg.kv_lora_rank + cfg.qk_rope_head_dim;
    bs = opt.block_size;
    ctx = opt.max_context > 0 ? opt.max_context : cfg.max_position_embeddings;
    const auto dev = model->device();
    const auto dtype = model->dtype();
    int64_t budget = opt.kv_cache_bytes;
    if (budget <= 0) {
      if (dev.is_cuda()) {
        size_t free_b = 0, total_b = 0;
        c10::cuda::CUDAGuard guard(dev.index());
        C10_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        budget = static_cast<int64_t>(free_b / 2);
      } else {
        budget = int64_t(256) << 20;
      }
    }
    const int64_t block_bytes = L * bs * D * static_cast<int64_t>(c10::elementSize(dtype));
    num_blocks = budget / block_bytes;
    if (num_blocks < 1)
      throw Error("rollout engine: a KV-cache budget of " + std::to_string(budget) + " bytes holds no block of " +
                  std::to_string(block_bytes) + " bytes");
    if (num_blocks > std::numeric_limits<int32_t>::max()) num_blocks = std::numeric_limits<int32_t>::max();
    // Zeroed: masked attention positions are multiplied by probability 0, and 0 * NaN from
    // uninitialised memory would poison the sum. Freed blocks keep finite values.
    pool = at::zeros({L, num_blocks * bs, D}, at::TensorOptions().dtype(dtype).device(dev));
    use_graphs = opt.cuda_graphs && dev.is_cuda() && num_blocks > 1;
    if (use_graphs) {
      // The graphs' MoE must not synchronise with the host: only the grouped-GEMM path qualifies.
      auto layer = model->model->layers[L - 1]->as<DecoderLayer>();
      if (layer->moe && !layer->moe->experts->use_grouped_mm(pool)) use_graphs = false;
    }
    const int64_t usable = use_graphs ? num_blocks - 1 : num_blocks;
    if (use_graphs) {
      dummy_block = static_cast<int32_t>(num_blocks - 1);
      graphs = std::make_unique<DecodeGraphs>(
          [this](const Tensor& packed, int64_t B, int64_t nblk) { return decode_forward(packed, B, nblk); }, dummy_block,
          bs, dev);
    }
    blocks = std::make_unique<BlockPool>(usable);
    stats.num_blocks = usable;
  }

  int64_t clamp_new(const Request& r) const {
    return std::min<int64_t>(r.params.max_new_tokens, ctx - (int64_t)r.prompt_ids.size());
  }
  int64_t own_blocks(int64_t P, int64_t max_new) const {
    // A sample's cache holds at most P + max_new - 1 tokens (its last token is never fed back).
    return blocks_for(P + max_new - 1) - P / bs;
  }

  void check(const Request& r, const std::string& where) const {
    const auto& p = r.params;
    const int64_t P = (int64_t)r.prompt_ids.size();
    auto fail = [&](const std::string& what) { throw Error(where + ": " + what); };
    if (P == 0) fail("empty prompt");
    for (int64_t t : r.prompt_ids)
      if (t < 0 || t >= cfg.vocab_size)
        fail("prompt token id " + std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(cfg.vocab_size) + ")");
    if (p.n < 1) fail("n must be at least 1 (got " + std::to_string(p.n) + ")");
    if (!(p.temperature >= 0) || std::isinf(p.temperature))
      fail("temperature must be a finite number >= 0 (got " + std::to_string(p.temperature) + ")");
    if (!(p.top_p > 0 && p.top_p <= 1)) fail("top_p must be in (0, 1] (got " + std::to_string(p.top_p) + ")");
    if (p.top_k < 0) fail("top_k must be >= 0 (got " + std::to_string(p.top_k) + ")");
    if (p.max_new_tokens < 1) fail("max_new_tokens must be at least 1 (got " + std::to_string(p.max_new_tokens) + ")");
    if (P >= ctx)
      fail("prompt of " + std::to_string(P) + " tokens does not fit the context of " + std::to_string(ctx) +
           " tokens (at least one new token must fit)");
    for (int64_t t : p.stop_token_ids)
      if (t < 0 || t >= cfg.vocab_size) fail("stop token id " + std::to_string(t) + " is outside the vocabulary");
    for (const auto& s : p.stop_strings) {
      if (s.empty()) fail("empty stop string");
      if (!tokenizer) fail("stop strings need a tokenizer (the model directory has no tokenizer.json)");
    }
    int64_t need = blocks_for(P) + p.n * own_blocks(P, clamp_new(r));
    if (need > blocks->usable())
      fail("needs " + std::to_string(need) + " KV-cache blocks for its " + std::to_string(p.n) +
           " samples, more than the " + std::to_string(blocks->usable()) + " the cache budget holds");
  }

  // --- prefill -------------------------------------------------------------------------------
  void prefill(std::vector<Group*>& batch) {
    auto t0 = std::chrono::steady_clock::now();
    const auto dev = model->device();
    const int64_t B = (int64_t)batch.size();
    int64_t T = 0;
    for (auto* g : batch) T = std::max<int64_t>(T, g->req.prompt_ids.size());
    std::vector<int64_t> ids(B * T, 0), src, dst, last;
    for (int64_t b = 0; b < B; ++b) {
      const auto& p = batch[b]->req.prompt_ids;
      for (int64_t t = 0; t < (int64_t)p.size(); ++t) {
        ids[b * T + t] = p[t];
        src.push_back(b * T + t);
        dst.push_back((int64_t)batch[b]->blocks[t / bs] * bs + t % bs);
      }
      last.push_back(b * T + (int64_t)p.size() - 1);
    }
    auto i64 = at::TensorOptions().dtype(at::kLong);
    Tensor input = at::from_blob(ids.data(), {B, T}, i64).to(dev);
    Tensor src_t = at::from_blob(src.data(), {(int64_t)src.size()}, i64).to(dev);
    Tensor dst_t = at::from_blob(dst.data(), {(int64_t)dst.size()}, i64).to(dev);
    Tensor last_t = at::from_blob(last.data(), {B}, i64).to(dev);
    std::vector<Tensor> latents;
    Tensor h = model->hidden_states(input, std::nullopt, std::nullopt, &latents);  // right padding: causal is exact
    for (int64_t l = 0; l < L; ++l) pool[l].index_copy_(0, dst_t, latents[l].reshape({B * T, D}).index_select(0, src_t));
    Tensor logits = model->logits(h.reshape({B * T, -1}).index_select(0, last_t)).to(at::kFloat);  // (B, V)
    for (int64_t b = 0; b < B; ++b) batch[b]->last_logits = logits[b];
    stats.prefill_tokens += (int64_t)src.size();
    stats.prefill_calls += 1;
    stats.prefill_seconds += seconds_since(t0);
  }

  // --- sequences -----------------------------------------------------------------------------
  // Appends a sampled token; returns true when the sequence is finished.
  bool append(Seq& s, int64_t token, float lp, FinishReason* why) {
    s.tokens.push_back(token);
    s.logprobs.push_back(lp);
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
        if (*it < tokenizer_vocab) tail.push_back((int32_t)*it);
      std::string text = tokenizer->decode(tail);
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

  Completion finish(Seq& s, FinishReason why) {
    Group& g = *s.group;
    Completion c;
    c.request_id = g.id;
    c.prompt_index = g.req.prompt_index;
    c.sample_index = s.sample;
    c.token_ids = std::move(s.tokens);
    c.logprobs = std::move(s.logprobs);
    c.finish_reason = why;
    c.weight_version = g.version;
    if (tokenizer) {
      // Ids past the tokenizer's vocabulary (checkpoints pad their embedding matrix) have no text.
      std::vector<int32_t> ids;
      for (int64_t t : c.token_ids)
        if (t < tokenizer_vocab) ids.push_back((int32_t)t);
      const auto& stops = g.req.params.stop_token_ids;
      if (!c.token_ids.empty() && !ids.empty() && ids.back() == c.token_ids.back() &&
          std::find(stops.begin(), stops.end(), ids.back()) != stops.end())
        ids.pop_back();
      c.text = tokenizer->decode(ids);
    }
    // Own blocks back to the pool; the shared prompt blocks when the last sample is done.
    const int64_t shared = (int64_t)g.req.prompt_ids.size() / bs;
    for (size_t i = shared; i < s.table.size(); ++i) blocks->release(s.table[i]);
    blocks->unreserve(s.reserved);
    g.unfinished -= 1;
    stats.finished += 1;
    return c;
  }

  void release_group_if_done(Group* g) {
    const int64_t n = g->req.params.n, P = (int64_t)g->req.prompt_ids.size();
    if (g->started == n && (P % bs) != 0 && (int64_t)g->blocks.size() > P / bs) {
      blocks->release(g->blocks.back());  // the partial block: every sample has its copy
      g->blocks.pop_back();
      g->last_logits = Tensor();
    }
    if (g->started == n && g->unfinished == 0) {
      for (int32_t b : g->blocks) blocks->release(b);
      g->blocks.clear();
      prefilled.remove_if([g](const std::unique_ptr<Group>& x) { return x.get() == g; });
    }
  }

  // Starts waiting samples of prefilled prompts while slots are free; their first token comes
  // from the prompt's logits.
  void start_samples(std::vector<Completion>& done) {
    std::vector<Seq*> fresh;
    std::vector<std::unique_ptr<Seq>> owned;
    for (auto& gp : prefilled) {
      Group* g = gp.get();
      const int64_t P = (int64_t)g->req.prompt_ids.size();
      while (g->started < g->req.params.n && (int64_t)(running.size() + owned.size()) < opt.max_batch) {
        auto s = std::make_unique<Seq>();
        s->group = g;
        s->sample = g->started++;
        s->reserved = g->own_blocks_per_sample;
        s->table.assign(g->blocks.begin(), g->blocks.begin() + P / bs);
        if (P % bs) {  // copy the partial prompt block into the sample's first own block
          int32_t own = blocks->take_reserved();
          s->reserved -= 1;
          pool.view({L, num_blocks, bs, D}).select(1, own).copy_(pool.view({L, num_blocks, bs, D}).select(1, g->blocks.back()));
          s->table.push_back(own);
        }
        fresh.push_back(s.get());
        owned.push_back(std::move(s));
      }
    }
    if (fresh.empty()) return;
    const int64_t S = (int64_t)fresh.size();
    std::vector<Tensor> rows;
    std::vector<float> temp(S), topp(S), u(S);
    std::vector<int64_t> topk(S);
    for (int64_t i = 0; i < S; ++i) {
      const auto& p = fresh[i]->group->req.params;
      rows.push_back(fresh[i]->group->last_logits);
      temp[i] = (float)p.temperature;
      topp[i] = (float)p.top_p;
      topk[i] = p.top_k;
      u[i] = sample_uniform(p.seed, fresh[i]->group->req.prompt_index, fresh[i]->sample, 0);
    }
    auto t0 = std::chrono::steady_clock::now();
    auto [tok, lp] = sample_tokens(at::stack(rows), temp, topk, topp, u);
    Tensor host = at::stack({tok.to(at::kDouble), lp.to(at::kDouble)}).to(at::kCPU);
    stats.sample_seconds += seconds_since(t0);
    auto acc = host.accessor<double, 2>();
    std::unordered_set<Group*> touched;
    for (int64_t i = 0; i < S; ++i) {
      FinishReason why;
      Seq& s = *owned[i];
      touched.insert(s.group);
      if (append(s, (int64_t)acc[0][i], (float)acc[1][i], &why))
        done.push_back(finish(s, why));
      else
        running.push_back(std::move(owned[i]));
    }
    for (Group* g : touched) release_group_if_done(g);
  }

  void admit(std::vector<Completion>& done) {
    start_samples(done);
    while (!waiting.empty() && unstarted() < opt.max_batch - (int64_t)running.size()) {
      std::vector<Group*> batch;
      int64_t maxP = 0, free_slots = opt.max_batch - (int64_t)running.size() - unstarted();
      while (!waiting.empty() && free_slots > 0) {
        Group* g = waiting.front().get();
        const int64_t P = (int64_t)g->req.prompt_ids.size();
        const int64_t need = blocks_for(P) + g->req.params.n * g->own_blocks_per_sample;
        if (need > blocks->available()) break;
        int64_t newP = std::max(maxP, P);
        if (!batch.empty() && newP * (int64_t)(batch.size() + 1) > opt.max_prefill_tokens) break;
        maxP = newP;
        for (int64_t i = 0; i < blocks_for(P); ++i) g->blocks.push_back(blocks->take());
        blocks->reserve(g->req.params.n * g->own_blocks_per_sample);
        g->version = *weight_version;
        free_slots -= g->req.params.n;
        batch.push_back(g);
        prefilled.push_back(std::move(waiting.front()));
        waiting.pop_front();
      }
      if (batch.empty()) break;
      prefill(batch);
      start_samples(done);
    }
  }

  // --- decode --------------------------------------------------------------------------------
  // The decode forward for a batch of B rows whose inputs are packed in one int64 device tensor:
  // [tokens (B) | positions (B) | write slots (B) | lengths (B) | block tables (B, nblk)].
  // Returns next-token logits (B, V) fp32. Free of host synchronisation, so a CUDA graph can hold it.
  Tensor decode_forward(const Tensor& packed, int64_t B, int64_t nblk) {
    const auto dev = packed.device();
    const int64_t Lpad = nblk * bs;
    auto i64 = at::TensorOptions().dtype(at::kLong).device(dev);
    Tensor tok = packed.narrow(0, 0, B), pos = packed.narrow(0, B, B), slots = packed.narrow(0, 2 * B, B);
    Tensor lens = packed.narrow(0, 3 * B, B), table = packed.narrow(0, 4 * B, B * nblk).view({B, nblk});
    Tensor gather_idx = (table.unsqueeze(-1) * bs + at::arange(bs, i64)).view({B * Lpad});
    Tensor invalid = (at::arange(Lpad, i64).unsqueeze(0) >= lens.unsqueeze(1)).unsqueeze(1);  // (B, 1, Lpad)
    Tensor x = model->model->embed_tokens(tok);  // (B, H)
    model::RopeTables rope = model->rope_tables(pos.view({B, 1}), x.scalar_type());
    for (int64_t l = 0; l < L; ++l) {
      auto layer = model->model->layers[l]->as<DecoderLayer>();
      x = x + layer->self_attn->decode_absorbed(layer->input_layernorm(x), rope, pool[l], slots, gather_idx, invalid, Lpad);
      x = x + layer->feed_forward(layer->post_attention_layernorm(x));
    }
    return model->logits(model->model->norm(x)).to(at::kFloat);  // (B, V)
  }

  void decode(std::vector<Completion>& done) {
    if (running.empty()) return;
    auto t0 = std::chrono::steady_clock::now();
    const auto dev = model->device();
    const int64_t B = (int64_t)running.size();
    int64_t nblk = 0;
    for (auto& s : running) {
      int64_t pos = (int64_t)s->group->req.prompt_ids.size() + (int64_t)s->tokens.size() - 1;
      if (pos / bs >= (int64_t)s->table.size()) {  // grow into a reserved block
        s->table.push_back(blocks->take_reserved());
        s->reserved -= 1;
      }
      nblk = std::max<int64_t>(nblk, s->table.size());
    }
    // Graphs run padded shapes: the batch and the block table rounded up to powers of two.
    const int64_t Bp = use_graphs ? DecodeGraphs::bucket(B) : B;
    const int64_t nb = use_graphs ? DecodeGraphs::bucket(nblk) : nblk;
    const int64_t pad_block = use_graphs ? dummy_block : 0;
    std::vector<int64_t> host(4 * Bp + Bp * nb, pad_block);
    if (use_graphs) graphs->pad_rows(host, Bp, nb, B);
    for (int64_t b = 0; b < B; ++b) {
      const Seq& s = *running[b];
      int64_t pos = (int64_t)s.group->req.prompt_ids.size() + (int64_t)s.tokens.size() - 1;
      host[b] = s.tokens.back();
      host[Bp + b] = pos;
      host[2 * Bp + b] = (int64_t)s.table[pos / bs] * bs + pos % bs;
      host[3 * Bp + b] = pos + 1;
      for (size_t i = 0; i < s.table.size(); ++i) host[4 * Bp + b * nb + i] = s.table[i];
    }
    Tensor host_t = at::from_blob(host.data(), {(int64_t)host.size()}, at::TensorOptions().dtype(at::kLong));
    Tensor logits;
    if (use_graphs) {
      logits = graphs->run(host_t, Bp, nb, B);
    } else {
      logits = decode_forward(host_t.to(dev), B, nb);
    }

    std::vector<float> temp(B), topp(B), u(B);
    std::vector<int64_t> topk(B);
    for (int64_t b = 0; b < B; ++b) {
      const Seq& s = *running[b];
      const auto& p = s.group->req.params;
      temp[b] = (float)p.temperature;
      topp[b] = (float)p.top_p;
      topk[b] = p.top_k;
      u[b] = sample_uniform(p.seed, s.group->req.prompt_index, s.sample, (int64_t)s.tokens.size());
    }
    auto ts = std::chrono::steady_clock::now();
    auto [next, lp] = sample_tokens(logits, temp, topk, topp, u);
    Tensor out = at::stack({next.to(at::kDouble), lp.to(at::kDouble)}).to(at::kCPU);
    stats.sample_seconds += seconds_since(ts);
    auto acc = out.accessor<double, 2>();
    std::vector<std::unique_ptr<Seq>> still;
    std::unordered_set<Group*> touched;  // once each: release may free the group
    for (int64_t b = 0; b < B; ++b) {
      FinishReason why;
      if (append(*running[b], (int64_t)acc[0][b], (float)acc[1][b], &why)) {
        touched.insert(running[b]->group);
        done.push_back(finish(*running[b], why));
      } else {
        still.push_back(std::move(running[b]));
      }
    }
    running = std::move(still);
    for (Group* g : touched) release_group_if_done(g);
    stats.decode_steps += 1;
    stats.decode_tokens += B;
    stats.decode_seconds += seconds_since(t0);
  }
};

// ---------------------------------------------------------------------------------------------
Engine::Engine(std::shared_ptr<model::DeepseekForCausalLM> model, const text::Tokenizer* tokenizer, EngineOptions options)
    : impl_(std::make_unique<Impl>(std::move(model), tokenizer, options)) {
  impl_->weight_version = &weight_version;
}
Engine::~Engine() = default;

void Engine::check(const Request& r, const std::string& where) const { impl_->check(r, where); }

uint64_t Engine::add(Request r, const std::string& where) {
  impl_->check(r, where);
  auto g = std::make_unique<Impl::Group>();
  g->id = impl_->next_id++;
  g->max_new = impl_->clamp_new(r);
  g->own_blocks_per_sample = impl_->own_blocks((int64_t)r.prompt_ids.size(), g->max_new);
  g->unfinished = r.params.n;
  g->req = std::move(r);
  uint64_t id = g->id;
  impl_->waiting.push_back(std::move(g));
  return id;
}

bool Engine::idle() const { return impl_->waiting.empty() && impl_->prefilled.empty() && impl_->running.empty(); }

std::vector<Completion> Engine::step() {
  c10::NoGradGuard no_grad;
  std::vector<Completion> done;
  impl_->admit(done);
  impl_->decode(done);
  return done;
}

std::vector<Completion> Engine::generate(const std::vector<Request>& requests,
                                         const std::function<void(const Completion&)>& on_done) {
  for (size_t i = 0; i < requests.size(); ++i) check(requests[i], "request " + std::to_string(i));
  std::map<uint64_t, size_t> order;
  for (size_t i = 0; i < requests.size(); ++i) order[add(requests[i], "request " + std::to_string(i))] = i;
  std::vector<Completion> out;
  while (!idle())
    for (auto& c : step()) {
      if (on_done) on_done(c);
      out.push_back(std::move(c));
    }
  std::sort(out.begin(), out.end(), [&](const Completion& a, const Completion& b) {
    size_t ia = order[a.request_id], ib = order[b.request_id];
    return ia != ib ? ia < ib : a.sample_index < b.sample_index;
  });
  return out;
}

int64_t Engine::max_context() const { return impl_->ctx; }
const EngineStats& Engine::stats() const {
  impl_->stats.peak_blocks_used = impl_->blocks->peak_used();
  return impl_->stats;
}
int64_t Engine::blocks_in_use() const { return impl_->num_blocks - impl_->blocks->free(); }
int64_t Engine::running() const { return (int64_t)impl_->running.size(); }
int64_t Engine::waiting() const { return (int64_t)impl_->waiting.size() + impl_->unstarted(); }

}  // namespace grpo::rollout

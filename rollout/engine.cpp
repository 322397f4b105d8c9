#include "rollout/engine.h"

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
#include <string>
#include <unordered_map>

#include "model/batch_invariant.h"
#include "rollout/decode_graphs.h"
#include "rollout/scheduler.h"
#include "rollout/speculative.h"
#include "text/tokenizer.h"
#include "util/error.h"

namespace grpo::rollout {

using at::Tensor;
using model::DecoderLayer;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
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

  Impl(std::shared_ptr<model::CausalLM> m, const text::Tokenizer* tok, EngineOptions o)
      : model(std::move(m)), tokenizer(tok), opt(o), cfg(model->config()) {
    if (opt.block_size < 1) throw Error("rollout engine: block_size must be >= 1");
    L = cfg.num_hidden_layers;
    D = cfg.kv_cache_width();
    spec = opt.speculative_mtp;
    if (spec && cfg.num_nextn_predict_layers < 1)
      throw Error("rollout engine: speculative_mtp needs a model with an MTP module (num_nextn_predict_layers)");
    if (spec && (opt.record_routing || model->batch_invariant))
      throw Error("rollout engine: speculative_mtp cannot be combined with record_routing or the batch-invariant forward");
    const int64_t cache_layers = L + (spec ? 1 : 0);
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
    const int64_t block_bytes = cache_layers * bs * D * static_cast<int64_t>(c10::elementSize(dtype));
    num_blocks = budget / block_bytes;
    if (num_blocks < 1)
      throw Error("rollout engine: a KV-cache budget of " + std::to_string(budget) + " bytes holds no block of " +
                  std::to_string(block_bytes) + " bytes");
    if (num_blocks > std::numeric_limits<int32_t>::max()) num_blocks = std::numeric_limits<int32_t>::max();
    // Zeroed: masked attention positions are multiplied by probability 0, and 0 * NaN from
    // uninitialised memory would poison the sum. Freed blocks keep finite values.
    pool = at::zeros({cache_layers, num_blocks * bs, D}, at::TensorOptions().dtype(dtype).device(dev));
    if (opt.record_routing && model->num_moe_layers() == 0) throw Error("rollout engine: record_routing needs a model with MoE layers");
    invariant = model->batch_invariant;
    use_graphs = opt.cuda_graphs && dev.is_cuda() && num_blocks > 1 && !invariant;
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
    sched = std::make_unique<Scheduler>(SchedulerLimits{opt.max_batch, opt.max_prefill_tokens, bs, ctx, spec ? 1 : 0},
                                        usable, tok);
    stats.num_blocks = usable;
  }

  void check(const Request& r, const std::string& where) const {
    sched->check(r, cfg.vocab_size, opt.max_samples, where);
  }

  // --- prefill -------------------------------------------------------------------------------
  void prefill(const std::vector<Group*>& batch) {
    auto t0 = std::chrono::steady_clock::now();
    if (invariant) {
      prefill_invariant(batch);
      stats.prefill_calls += 1;
      stats.prefill_seconds += seconds_since(t0);
      return;
    }
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
    std::vector<Tensor> rows;  // each layer's KV-cache rows of every prompt token
    std::vector<model::RouterImpl::Routing> routing;
    Tensor h = model->hidden_states(input, std::nullopt, std::nullopt, &rows,
                                    opt.record_routing ? &routing : nullptr);  // right padding: causal is exact
    for (int64_t l = 0; l < L; ++l) pool[l].index_copy_(0, dst_t, rows[l].reshape({B * T, D}).index_select(0, src_t));
    if (opt.record_routing) {  // (B*T, MoE layers, k) on the host, then each prompt's rows
      std::vector<Tensor> experts;
      for (const auto& r : routing) experts.push_back(r.experts);
      const std::vector<int16_t> rec = host_experts(experts);
      const int64_t per_token = (int64_t)rec.size() / (B * T);
      for (int64_t b = 0; b < B; ++b) {
        const auto first = rec.begin() + b * T * per_token;
        batch[b]->prompt_routing.assign(first, first + batch[b]->prompt_len() * per_token);
      }
    }
    Tensor last_h = h.reshape({B * T, -1}).index_select(0, last_t);
    Tensor logits = model->logits(last_h).to(at::kFloat);  // (B, V)
    for (int64_t b = 0; b < B; ++b) prompt_logits[batch[b]->id] = logits[b];
    if (spec) {
      prefill_mtp(batch, input, h, T);
      for (int64_t b = 0; b < B; ++b) prompt_hidden[batch[b]->id] = last_h[b];
    }
    stats.prefill_tokens += (int64_t)src.size();
    stats.prefill_calls += 1;
    stats.prefill_seconds += seconds_since(t0);
  }

  // The MTP module's cache rows of the prompt tokens whose next token is known: row i (hidden state
  // at i, token i + 1) for i < P - 1, into the slot of position i + 1.
  void prefill_mtp(const std::vector<Group*>& batch, const Tensor& input, const Tensor& h, int64_t T) {
    const auto dev = model->device();
    const int64_t B = (int64_t)batch.size();
    Tensor next = at::zeros_like(input);
    if (T > 1) next.narrow(1, 0, T - 1).copy_(input.narrow(1, 1, T - 1));
    Tensor pos = at::arange(T, at::TensorOptions().dtype(at::kLong).device(dev)).unsqueeze(0).expand({B, T});
    Tensor rows;
    model->mtp_module(1).mtp_forward(h, next, model->rope_tables(pos, h.scalar_type()), model::AttentionMask{}, &rows);
    std::vector<int64_t> src, dst;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i + 1 < batch[b]->prompt_len(); ++i) {
        src.push_back(b * T + i);
        dst.push_back((int64_t)batch[b]->blocks[(i + 1) / bs] * bs + (i + 1) % bs);
      }
    if (src.empty()) return;
    auto i64 = [&](const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(dev); };
    pool[L].index_copy_(0, i64(dst), rows.reshape({B * T, D}).index_select(0, i64(src)));
  }

  // Prefill through the batch-invariant forward: every prompt token writes its cache rows and
  // attends to its prompt's earlier slots through the group's block table.
  void prefill_invariant(const std::vector<Group*>& batch) {
    std::vector<int64_t> ids, pos, slots, table, start, count, last, first;
    for (Group* g : batch) {
      const auto& p = g->req.prompt_ids;
      const int64_t table_at = (int64_t)table.size();
      first.push_back((int64_t)ids.size());
      for (int32_t blk : g->blocks) table.push_back(blk);
      for (int64_t t = 0; t < (int64_t)p.size(); ++t) {
        ids.push_back(p[t]);
        pos.push_back(t);
        slots.push_back((int64_t)g->blocks[t / bs] * bs + t % bs);
        start.push_back(table_at);
        count.push_back(t + 1);
      }
      last.push_back((int64_t)ids.size() - 1);
    }
    std::vector<Tensor> experts;
    Tensor h = model::invariant::hidden_states(*model, invariant_rows(ids, pos, slots, table, start, count),
                                               pool.unbind(0), opt.record_routing ? &experts : nullptr);
    if (opt.record_routing) {
      const std::vector<int16_t> rec = host_experts(experts);
      const int64_t per_token = (int64_t)rec.size() / (int64_t)ids.size();
      for (size_t b = 0; b < batch.size(); ++b) {
        const auto from = rec.begin() + first[b] * per_token;
        batch[b]->prompt_routing.assign(from, from + batch[b]->prompt_len() * per_token);
      }
    }
    Tensor logits = model::invariant::logits(*model, h.index_select(0, at::tensor(last, at::kLong).to(model->device())));
    for (size_t b = 0; b < batch.size(); ++b) prompt_logits[batch[b]->id] = logits[b];
    stats.prefill_tokens += (int64_t)ids.size();
  }

  model::invariant::TokenRows invariant_rows(const std::vector<int64_t>& ids, const std::vector<int64_t>& pos,
                                             const std::vector<int64_t>& slots, const std::vector<int64_t>& table,
                                             const std::vector<int64_t>& start, const std::vector<int64_t>& count) const {
    const auto dev = model->device();
    auto i64 = [&](const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)).to(dev); };
    model::invariant::TokenRows rows;
    rows.ids = i64(ids);
    rows.positions = i64(pos);
    rows.write_slots = i64(slots);
    auto host = [](const std::vector<int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); };
    rows.keys.table = host(table);  // checked on the host, then moved, once per forward
    rows.keys.table_start = host(start);
    rows.keys.num_keys = host(count);
    rows.keys.block_size = bs;
    return rows;
  }

  // One decode step through the batch-invariant forward: (B, V) fp32 logits, followed with
  // record_routing by the experts' columns, as decode_forward returns them.
  Tensor decode_invariant(const std::vector<Sequence*>& seqs) {
    std::vector<int64_t> ids, pos, slots, table, start, count;
    for (const Sequence* s : seqs) {
      const int64_t p = s->position();
      ids.push_back(s->tokens.back());
      pos.push_back(p);
      slots.push_back((int64_t)s->table[p / bs] * bs + p % bs);
      start.push_back((int64_t)table.size());
      count.push_back(p + 1);
      for (int32_t blk : s->table) table.push_back(blk);
    }
    std::vector<Tensor> experts;
    Tensor h = model::invariant::hidden_states(*model, invariant_rows(ids, pos, slots, table, start, count),
                                               pool.unbind(0), opt.record_routing ? &experts : nullptr);
    Tensor logits = model::invariant::logits(*model, h);
    if (opt.record_routing) logits = at::cat({logits, at::cat(experts, 1).to(at::kFloat)}, 1);
    return logits;
  }

  // Each MoE layer's experts (N, k) as int16 on the host, token-major: (N, MoE layers, k).
  static std::vector<int16_t> host_experts(const std::vector<Tensor>& experts) {
    Tensor all = at::cat(experts, 1).to(at::kShort).to(at::kCPU).contiguous();
    return std::vector<int16_t>(all.data_ptr<int16_t>(), all.data_ptr<int16_t>() + all.numel());
  }

  // --- samples -------------------------------------------------------------------------------
  // Starts waiting samples of prefilled prompts while slots are free; their first token comes
  // from the prompt's logits.
  void start_samples(std::vector<Completion>& done) {
    std::vector<BlockCopy> copies;
    std::vector<Sequence*> fresh = sched->start_samples(&copies);
    if (fresh.empty()) return;
    auto blocks_view = pool.view({pool.size(0), num_blocks, bs, D});
    for (const auto& c : copies) blocks_view.select(1, c.to).copy_(blocks_view.select(1, c.from));
    const int64_t S = (int64_t)fresh.size();
    std::vector<Tensor> rows;
    std::vector<float> temp(S), topp(S), u(S);
    std::vector<int64_t> topk(S);
    for (int64_t i = 0; i < S; ++i) {
      const auto& g = *fresh[i]->group;
      const auto& p = g.req.params;
      rows.push_back(prompt_logits.at(g.id));
      temp[i] = (float)p.temperature;
      topp[i] = (float)p.top_p;
      topk[i] = p.top_k;
      u[i] = sample_uniform(p.seed, g.req.prompt_index, fresh[i]->sample, 0);
    }
    std::vector<Tensor> hidden;  // speculative: each sample's first MTP row reads the prompt's last hidden state
    std::vector<uint64_t> finished_groups;
    for (Sequence* s : fresh) {
      if (spec) hidden.push_back(prompt_hidden.at(s->group->id));
      if (s->group->all_started()) finished_groups.push_back(s->group->id);
    }
    for (uint64_t id : finished_groups) {
      prompt_logits.erase(id);
      prompt_hidden.erase(id);
    }
    sample_and_advance(at::stack(rows), fresh, temp, topk, topp, u, done);
    if (!spec) return;
    // Samples that did not end at their first token wait for their first MTP row.
    const auto& run = sched->running();
    for (int64_t i = 0; i < S; ++i)
      if (std::find(run.begin(), run.end(), fresh[i]) != run.end())
        pending[fresh[i]] = {fresh[i]->group->prompt_len() - 1, hidden[i].unsqueeze(0), {fresh[i]->tokens.back()}};
  }

  // Samples one token per row of `logits` and hands them to the scheduler.
  void sample_and_advance(const Tensor& logits, const std::vector<Sequence*>& seqs, const std::vector<float>& temp,
                          const std::vector<int64_t>& topk, const std::vector<float>& topp,
                          const std::vector<float>& u, std::vector<Completion>& done) {
    auto t0 = std::chrono::steady_clock::now();
    auto [tok, lp] = sample_tokens(logits, temp, topk, topp, u);
    if (invariant) lp = model::invariant::log_softmax(logits).gather(1, tok.unsqueeze(1)).squeeze(1);
    Tensor host = at::stack({tok.to(at::kDouble), lp.to(at::kDouble)}).to(at::kCPU);
    stats.sample_seconds += seconds_since(t0);
    auto acc = host.accessor<double, 2>();
    const size_t n = seqs.size();
    std::vector<int64_t> tokens(n);
    std::vector<float> logprobs(n);
    for (size_t i = 0; i < n; ++i) {
      tokens[i] = (int64_t)acc[0][i];
      logprobs[i] = (float)acc[1][i];
    }
    sched->advance(seqs, tokens, logprobs, done);
  }

  // Starts samples, then prefills admitted prompts and starts theirs, while slots and cache allow.
  void admit(std::vector<Completion>& done) {
    start_samples(done);
    for (;;) {
      std::vector<Group*> batch = sched->admit(*weight_version);
      if (batch.empty()) break;
      prefill(batch);
      start_samples(done);
    }
  }

  // --- decode --------------------------------------------------------------------------------
  // The decode forward for a batch of B rows whose inputs are packed in one int64 device tensor:
  // [tokens (B) | positions (B) | write slots (B) | lengths (B) | block tables (B, nblk)].
  // Returns next-token logits (B, V) fp32, followed with record_routing by each MoE layer's experts
  // as fp32 columns (B, MoE layers x k), and with speculative decoding by the final-norm hidden
  // states (B, H) as fp32 columns, so that one static graph output carries them all. Free of host
  // synchronisation, so a CUDA graph can hold it.
  Tensor decode_forward(const Tensor& packed, int64_t B, int64_t nblk) {
    PagedRows in = unpack(packed, B, nblk);
    Tensor x = model->model->embed_tokens(in.tokens);  // (B, H)
    model::RopeTables rope = model->rope_tables(in.positions.view({B, 1}), x.scalar_type());
    std::vector<Tensor> experts;
    for (int64_t l = 0; l < L; ++l) {
      auto layer = model->model->layers[l]->as<DecoderLayer>();
      x = x + layer->self_attn->decode(layer->input_layernorm(x), rope, pool[l], in.slots, in.gather_idx, in.invalid,
                                       in.Lpad);
      model::RouterImpl::Routing r;
      const bool record = opt.record_routing && layer->moe;
      x = x + layer->feed_forward(layer->post_attention_layernorm(x), record ? &r : nullptr);
      if (record) experts.push_back(r.experts);
    }
    Tensor h = model->model->norm(x);
    Tensor logits = model->logits(h).to(at::kFloat);  // (B, V)
    if (opt.record_routing) logits = at::cat({logits, at::cat(experts, 1).to(at::kFloat)}, 1);  // exact below 2^24
    if (spec) logits = at::cat({logits, h.to(at::kFloat)}, 1);  // exact: fp32 holds every bf16 value
    return logits;
  }

  // A decode forward's inputs, unpacked: B rows, each reading the cache through its block table.
  struct PagedRows {
    Tensor tokens, positions, slots;  // (B)
    Tensor gather_idx;                // (B * Lpad) cache rows of each row's block table
    Tensor invalid;                   // (B, 1, Lpad) key positions at or past the row's length
    int64_t Lpad = 0;
  };
  PagedRows unpack(const Tensor& packed, int64_t B, int64_t nblk) const {
    auto i64 = at::TensorOptions().dtype(at::kLong).device(packed.device());
    PagedRows r;
    r.Lpad = nblk * bs;
    r.tokens = packed.narrow(0, 0, B);
    r.positions = packed.narrow(0, B, B);
    r.slots = packed.narrow(0, 2 * B, B);
    Tensor lens = packed.narrow(0, 3 * B, B), table = packed.narrow(0, 4 * B, B * nblk).view({B, nblk});
    r.gather_idx = (table.unsqueeze(-1) * bs + at::arange(bs, i64)).view({B * r.Lpad});
    r.invalid = (at::arange(r.Lpad, i64).unsqueeze(0) >= lens.unsqueeze(1)).unsqueeze(1);
    return r;
  }

  // The MTP module over packed rows (as decode_forward's; a row's length counts the slots it reads)
  // given the main model's final-norm hidden states h (R, H): writes its cache rows into layer L of
  // the pool and returns its next-token logits (R, V) fp32. The slot of position 0 holds no MTP row.
  Tensor mtp_forward(const Tensor& packed, int64_t R, int64_t nblk, const Tensor& h) {
    PagedRows in = unpack(packed, R, nblk);
    Tensor invalid = in.invalid | (at::arange(in.Lpad, in.invalid.options().dtype(at::kLong)) == 0).view({1, 1, -1});
    model::DecoderLayerImpl& m = model->mtp_module(1);
    Tensor x = m.eh_proj(at::cat({m.enorm(m.embed_tokens(in.tokens)), m.hnorm(h)}, -1));
    model::RopeTables rope = model->rope_tables(in.positions.view({R, 1}), x.scalar_type());
    x = x + m.self_attn->decode(m.input_layernorm(x), rope, pool[L], in.slots, in.gather_idx, invalid, in.Lpad);
    x = x + m.feed_forward(m.post_attention_layernorm(x));
    return m.mtp_logits(x).to(at::kFloat);
  }

  void decode(std::vector<Completion>& done) {
    if (sched->running().empty()) return;
    if (spec) return decode_speculative(done);
    auto t0 = std::chrono::steady_clock::now();
    sched->grow();
    const std::vector<Sequence*> seqs = sched->running();
    const int64_t B = (int64_t)seqs.size();
    int64_t nblk = 0;
    for (const Sequence* s : seqs) nblk = std::max<int64_t>(nblk, s->table.size());
    // Graphs run padded shapes: the batch and the block table rounded up to powers of two.
    const int64_t Bp = use_graphs ? DecodeGraphs::bucket(B) : B;
    const int64_t nb = use_graphs ? DecodeGraphs::bucket(nblk) : nblk;
    const int64_t pad_block = use_graphs ? dummy_block : 0;
    std::vector<int64_t> host(4 * Bp + Bp * nb, pad_block);
    if (use_graphs) graphs->pad_rows(host, Bp, nb, B);
    for (int64_t b = 0; b < B; ++b) {
      const Sequence& s = *seqs[b];
      const int64_t pos = s.position();
      host[b] = s.tokens.back();
      host[Bp + b] = pos;
      host[2 * Bp + b] = (int64_t)s.table[pos / bs] * bs + pos % bs;
      host[3 * Bp + b] = pos + 1;
      for (size_t i = 0; i < s.table.size(); ++i) host[4 * Bp + b * nb + i] = s.table[i];
    }
    Tensor host_t = at::from_blob(host.data(), {(int64_t)host.size()}, at::TensorOptions().dtype(at::kLong));
    Tensor logits = invariant    ? decode_invariant(seqs)
                    : use_graphs ? graphs->run(host_t, Bp, nb, B)
                                 : decode_forward(host_t.to(model->device()), B, nb);
    if (opt.record_routing) {  // each row's experts follow its sequence
      const int64_t V = cfg.vocab_size;
      const std::vector<int16_t> rec = host_experts({logits.narrow(1, V, logits.size(1) - V)});
      logits = logits.narrow(1, 0, V).contiguous();
      const size_t per_token = rec.size() / B;
      for (int64_t b = 0; b < B; ++b)
        seqs[b]->routing.insert(seqs[b]->routing.end(), rec.begin() + b * per_token, rec.begin() + (b + 1) * per_token);
    }

    std::vector<float> temp(B), topp(B), u(B);
    std::vector<int64_t> topk(B);
    for (int64_t b = 0; b < B; ++b) {
      const Sequence& s = *seqs[b];
      const auto& p = s.group->req.params;
      temp[b] = (float)p.temperature;
      topp[b] = (float)p.top_p;
      topk[b] = p.top_k;
      u[b] = sample_uniform(p.seed, s.group->req.prompt_index, s.sample, (int64_t)s.tokens.size());
    }
    sample_and_advance(logits, seqs, temp, topk, topp, u, done);
    stats.decode_steps += 1;
    stats.decode_tokens += B;
    stats.decode_seconds += seconds_since(t0);
  }

  int64_t slot(const Sequence& s, int64_t position) const {
    return (int64_t)s.table[position / bs] * bs + position % bs;
  }

  // One speculative step of every running sequence, whose last token t_n sits at position n:
  // the MTP module reads the sequence's pending rows and drafts d for position n + 1; the policy
  // reads t_n and d in one forward (two rows per sequence); d is kept or replaced by the acceptance
  // rule, and when kept the policy's token after it comes too: one or two tokens per step.
  void decode_speculative(std::vector<Completion>& done) {
    auto t0 = std::chrono::steady_clock::now();
    sched->grow(/*ahead=*/1);  // t_n's and d's cache rows
    const std::vector<Sequence*> seqs = sched->running();
    const int64_t B = (int64_t)seqs.size(), V = cfg.vocab_size;
    const auto dev = model->device();
    int64_t nblk = 0;
    for (const Sequence* s : seqs) nblk = std::max<int64_t>(nblk, s->table.size());
    std::vector<float> temp(B), topp(B), u_draft(B), u_accept(B), u_residual(B), u_bonus(B);
    std::vector<int64_t> topk(B);
    for (int64_t b = 0; b < B; ++b) {
      const Sequence& s = *seqs[b];
      const auto& p = s.group->req.params;
      const int64_t j = (int64_t)s.tokens.size();  // the completion index of the token decided now
      temp[b] = (float)p.temperature;
      topp[b] = (float)p.top_p;
      topk[b] = p.top_k;
      u_draft[b] = stream_uniform(1, p.seed, s.group->req.prompt_index, s.sample, j);
      u_accept[b] = stream_uniform(2, p.seed, s.group->req.prompt_index, s.sample, j);
      u_residual[b] = stream_uniform(3, p.seed, s.group->req.prompt_index, s.sample, j);
      u_bonus[b] = stream_uniform(0, p.seed, s.group->req.prompt_index, s.sample, j + 1);
    }
    auto device_floats = [&](const std::vector<float>& v) { return at::tensor(v, at::kFloat).to(dev); };

    // 1. The draft: the MTP module over each sequence's pending rows; the last one predicts n + 1.
    std::vector<Tensor> hidden;
    std::vector<int64_t> last_rows;
    int64_t R = 0;
    for (const Sequence* s : seqs) R += (int64_t)pending.at(s).tokens.size();
    std::vector<int64_t> mp(4 * R + R * nblk, 0);
    int64_t r = 0;
    for (const Sequence* s : seqs) {
      const Pending& pd = pending.at(s);
      hidden.push_back(pd.hidden);
      for (size_t k = 0; k < pd.tokens.size(); ++k, ++r) {
        const int64_t i = pd.first_position + (int64_t)k;
        mp[r] = pd.tokens[k];
        mp[R + r] = i;
        mp[2 * R + r] = slot(*s, i + 1);
        mp[3 * R + r] = i + 2;
        for (size_t t = 0; t < s->table.size(); ++t) mp[4 * R + r * nblk + t] = s->table[t];
      }
      last_rows.push_back(r - 1);
    }
    Tensor mtp_in = at::tensor(mp, at::kLong).to(dev);
    Tensor draft_logits = mtp_forward(mtp_in, R, nblk, at::cat(hidden)).index_select(0, at::tensor(last_rows, at::kLong).to(dev));
    Tensor q = sampling_probs(draft_logits, temp, topk, topp);
    Tensor draft = sample_from(q, device_floats(u_draft));
    Tensor draft_host = draft.to(at::kCPU);
    const int64_t* d = draft_host.data_ptr<int64_t>();

    // 2. The check: rows (t_n at n) and (d at n + 1) of every sequence in one forward.
    const int64_t rows = 2 * B;
    const int64_t Rp = use_graphs ? DecodeGraphs::bucket(rows) : rows;
    const int64_t nb = use_graphs ? DecodeGraphs::bucket(nblk) : nblk;
    std::vector<int64_t> host(4 * Rp + Rp * nb, use_graphs ? dummy_block : 0);
    if (use_graphs) graphs->pad_rows(host, Rp, nb, rows);
    for (int64_t b = 0; b < B; ++b) {
      const Sequence& s = *seqs[b];
      const int64_t n = s.position();
      for (int64_t k = 0; k < 2; ++k) {
        const int64_t row = 2 * b + k;
        host[row] = k == 0 ? s.tokens.back() : d[b];
        host[Rp + row] = n + k;
        host[2 * Rp + row] = slot(s, n + k);
        host[3 * Rp + row] = n + k + 1;
        for (size_t t = 0; t < s.table.size(); ++t) host[4 * Rp + row * nb + t] = s.table[t];
      }
    }
    Tensor host_t = at::from_blob(host.data(), {(int64_t)host.size()}, at::TensorOptions().dtype(at::kLong));
    Tensor out = use_graphs ? graphs->run(host_t, Rp, nb, rows) : decode_forward(host_t.to(dev), rows, nb);
    Tensor logits = out.narrow(1, 0, V).view({B, 2, V});
    Tensor h = out.narrow(1, V, out.size(1) - V).to(model->dtype()).view({B, 2, -1});
    Tensor l1 = logits.select(1, 0).contiguous(), l2 = logits.select(1, 1).contiguous();

    // 3. The verdict, and the policy's token after a kept draft.
    auto ts = std::chrono::steady_clock::now();
    SpeculativeVerdict v = accept_or_resample(sampling_probs(l1, temp, topk, topp), q, draft, device_floats(u_accept),
                                              device_floats(u_residual));
    Tensor bonus = sample_from(sampling_probs(l2, temp, topk, topp), device_floats(u_bonus));
    Tensor lp1 = l1.log_softmax(-1).gather(1, v.token.unsqueeze(1)).squeeze(1);
    Tensor lp2 = l2.log_softmax(-1).gather(1, bonus.unsqueeze(1)).squeeze(1);
    Tensor res = at::stack({v.token.to(at::kDouble), v.accepted.to(at::kDouble), bonus.to(at::kDouble),
                            lp1.to(at::kDouble), lp2.to(at::kDouble)}).to(at::kCPU);
    stats.sample_seconds += seconds_since(ts);
    auto a = res.accessor<double, 2>();
    std::vector<std::vector<int64_t>> tokens(B);
    std::vector<std::vector<float>> logprobs(B);
    std::unordered_map<const Sequence*, Pending> next;
    for (int64_t b = 0; b < B; ++b) {
      const bool kept = a[1][b] != 0;
      tokens[b] = {(int64_t)a[0][b]};
      logprobs[b] = {(float)a[3][b]};
      if (kept) {
        tokens[b].push_back((int64_t)a[2][b]);
        logprobs[b].push_back((float)a[4][b]);
      }
      // The module's next rows: hidden state at n with the token now at n + 1, and when the draft
      // was kept, at n + 1 with the token after it.
      next[seqs[b]] = {seqs[b]->position(), h[b].narrow(0, 0, kept ? 2 : 1), tokens[b]};
      stats.draft_tokens += 1;
      stats.accepted_drafts += kept ? 1 : 0;
      stats.decode_tokens += (int64_t)tokens[b].size();
    }
    sched->advance(seqs, tokens, logprobs, done);
    pending.clear();
    for (const Sequence* s : sched->running()) pending[s] = std::move(next.at(s));
    stats.decode_steps += 1;
    stats.decode_seconds += seconds_since(t0);
  }
};

// ---------------------------------------------------------------------------------------------
Engine::Engine(std::shared_ptr<model::CausalLM> model, const text::Tokenizer* tokenizer, EngineOptions options)
    : impl_(std::make_unique<Impl>(std::move(model), tokenizer, options)) {
  impl_->weight_version = &weight_version;
}
Engine::~Engine() = default;

void Engine::check(const Request& r, const std::string& where) const { impl_->check(r, where); }

uint64_t Engine::add(Request r, const std::string& where) {
  impl_->check(r, where);
  return impl_->sched->add(std::move(r));
}

bool Engine::idle() const { return impl_->sched->idle(); }

bool Engine::cancel(uint64_t request_id) {
  impl_->prompt_logits.erase(request_id);
  return impl_->sched->cancel(request_id);
}

std::vector<Completion> Engine::step() {
  c10::NoGradGuard no_grad;
  std::vector<Completion> done;
  impl_->admit(done);
  impl_->decode(done);
  for (const Completion& c : done) impl_->stats.routing_bytes += (int64_t)(c.routed_experts.size() * sizeof(int16_t));
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
  impl_->stats.peak_blocks_used = impl_->sched->blocks().peak_used();
  impl_->stats.finished = impl_->sched->finished();
  return impl_->stats;
}
int64_t Engine::blocks_in_use() const { return impl_->num_blocks - impl_->sched->blocks().free(); }
int64_t Engine::running() const { return (int64_t)impl_->sched->running().size(); }
int64_t Engine::waiting() const { return impl_->sched->waiting_prompts() + impl_->sched->unstarted_samples(); }

}  // namespace grpo::rollout

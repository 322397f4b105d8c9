#include "rollout/engine.h"

#include "model/fused_kernels.h"
#include "model/kernel_trial.h"
#include "rollout/engine_impl.h"

namespace grpo::rollout {

Engine::Impl::Impl(std::shared_ptr<model::CausalLM> m, const text::Tokenizer* tok, EngineOptions o)
                   : model(std::move(m)), tokenizer(tok), opt(o), cfg(model->config()) {
  if (opt.block_size < 1) throw Error("rollout engine: block_size must be >= 1");
  L = cfg.num_hidden_layers;
  D = cfg.kv_cache_width();
  spec = opt.speculative_mtp;
  if (spec && cfg.num_nextn_predict_layers < 1)
    throw Error("rollout engine: speculative_mtp needs a model with an MTP module (num_nextn_predict_layers)");
  if (opt.num_speculative_tokens < 1 || opt.num_speculative_tokens > 16)
    throw Error("rollout engine: num_speculative_tokens must be in [1, 16], got " +
                std::to_string(opt.num_speculative_tokens));
  const int64_t lookahead = spec ? opt.num_speculative_tokens : 0;  // cache rows written past the last token
  const int64_t cache_layers = L + (spec ? 1 : 0);
  bs = opt.block_size;
  ctx = opt.max_context > 0 ? opt.max_context : cfg.max_position_embeddings;
  const auto dev = model->device();
  const auto dtype = model->dtype();
  fp8 = opt.fp8;
  if (fp8) {
    if (model->batch_invariant) throw Error("rollout engine: fp8 weights cannot be combined with the batch-invariant forward (exact_rollout)");
    if (dev.is_cuda() && !model::fp8::native(dev))
      throw Error("rollout engine: fp8 weights need a Hopper GPU (compute capability 9.x: the 128 x 128 block-scaled "
                  "FP8 product exists there only)");
    if (dev.is_cuda() && dtype != at::kBFloat16) throw Error("rollout engine: fp8 weights on the GPU need a bf16 model");
    refresh_fp8();  // allocates the copies now, before the KV cache takes its share of the free memory
    if (stats.fp8_layers == 0) throw Error("rollout engine: fp8 weights: no layer has sizes that are multiples of 16");
  }
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
  fused = opt.fused_kernels && !invariant;
  if (invariant) inv_freq = model::rope_inv_freq(cfg).to(dev);
  use_graphs = opt.cuda_graphs && dev.is_cuda() && num_blocks > 1;
  if (use_graphs && !invariant) {
    // The graphs' MoE must not synchronise with the host: only the grouped-GEMM path qualifies.
    auto layer = model->model->layers[L - 1]->as<DecoderLayer>();
    if (layer->moe && !layer->moe->experts->use_grouped_mm(pool)) use_graphs = false;
  }
  overlap = opt.overlap_steps && use_graphs && !spec && !opt.record_routing;
  const int64_t usable = use_graphs ? num_blocks - 1 : num_blocks;
  if (use_graphs) {
    dummy_block = static_cast<int32_t>(num_blocks - 1);
    graphs = std::make_unique<DecodeGraphs>(
        [this](const Tensor& packed, int64_t B, int64_t nblk) {
          return invariant ? decode_invariant(packed, B, nblk) : decode_forward(packed, B, nblk);
        },
        dummy_block, bs, dev);
    if (spec) {
      mtp_hidden = at::zeros({DecodeGraphs::bucket((lookahead + 1) * opt.max_batch), cfg.hidden_size}, pool.options());
      mtp_graphs = std::make_unique<DecodeGraphs>(
          [this](const Tensor& packed, int64_t R, int64_t nblk) {
            return mtp_forward(packed, R, nblk, mtp_hidden.narrow(0, 0, R));
          },
          dummy_block, bs, dev);
    }
  }
  sched = std::make_unique<Scheduler>(SchedulerLimits{opt.max_batch, opt.max_prefill_tokens, bs, ctx, lookahead},
                                      usable, tok);
  stats.num_blocks = usable;
}

void Engine::Impl::check(const Request& r, const std::string& where) const {
  sched->check(r, cfg.vocab_size, opt.max_samples, where);
}

void Engine::Impl::prefill(const std::vector<Group*>& batch) {
  auto t0 = std::chrono::steady_clock::now();
  // The first tokens' sampling waits for the device right after; waiting here instead makes
  // prefill_seconds the prefill's own time on CUDA, not the time its kernels took to launch.
  auto finish = [&] {
    if (pool.is_cuda()) torch::cuda::synchronize(pool.device().index());
    stats.prefill_calls += 1;
    stats.prefill_seconds += seconds_since(t0);
  };
  if (invariant) {
    prefill_invariant(batch);
    finish();
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
  finish();
}

void Engine::Impl::prefill_invariant(const std::vector<Group*>& batch) {
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
                                             main_caches(), opt.record_routing ? &experts : nullptr);
  if (opt.record_routing) {
    const std::vector<int16_t> rec = host_experts(experts);
    const int64_t per_token = (int64_t)rec.size() / (int64_t)ids.size();
    for (size_t b = 0; b < batch.size(); ++b) {
      const auto from = rec.begin() + first[b] * per_token;
      batch[b]->prompt_routing.assign(from, from + batch[b]->prompt_len() * per_token);
    }
  }
  const auto dev = model->device();
  Tensor last_h = h.index_select(0, at::tensor(last, at::kLong).to(dev));
  Tensor logits = model::invariant::logits(*model, last_h);
  for (size_t b = 0; b < batch.size(); ++b) prompt_logits[batch[b]->id] = logits[b];
  if (spec) {  // the draft's prompt rows, from the prompts' hidden states laid out (B, T) as prefill_mtp reads them
    const int64_t B = (int64_t)batch.size();
    int64_t T = 0;
    for (Group* g : batch) T = std::max<int64_t>(T, g->prompt_len());
    std::vector<int64_t> padded(B * T, 0), where;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < batch[b]->prompt_len(); ++t) {
        padded[b * T + t] = ids[first[b] + t];
        where.push_back(b * T + t);
      }
    Tensor input = at::tensor(padded, at::kLong).view({B, T}).to(dev);
    Tensor hp = at::zeros({B * T, h.size(1)}, h.options()).index_copy_(0, at::tensor(where, at::kLong).to(dev), h);
    prefill_mtp(batch, input, hp.view({B, T, -1}), T);
    for (int64_t b = 0; b < B; ++b) prompt_hidden[batch[b]->id] = last_h[b];
  }
  stats.prefill_tokens += (int64_t)ids.size();
}

model::invariant::TokenRows Engine::Impl::invariant_rows(const std::vector<int64_t>& ids, const std::vector<int64_t>& pos,
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

Tensor Engine::Impl::decode_invariant(const Tensor& packed, int64_t B, int64_t nblk) {
  PagedRows in = unpack(packed, B, nblk);
  model::invariant::TokenRows rows;
  rows.ids = in.tokens;
  rows.positions = in.positions;
  rows.write_slots = in.kv.write_slots;
  // Built by the scheduler, so valid: no host check (which a CUDA graph could not hold).
  rows.keys.table = in.kv.table.reshape({-1});
  rows.keys.table_start = at::arange(B, packed.options()) * nblk;
  rows.keys.num_keys = in.kv.lens;
  rows.keys.block_size = bs;
  rows.keys.max_keys = nblk * bs;
  rows.inv_freq = inv_freq;
  std::vector<Tensor> experts;
  Tensor h = model::invariant::hidden_states(*model, rows, main_caches(), opt.record_routing ? &experts : nullptr);
  Tensor logits = model::invariant::logits(*model, h);
  if (opt.record_routing) logits = at::cat({logits, at::cat(experts, 1).to(at::kFloat)}, 1);
  if (spec) logits = at::cat({logits, h.to(at::kFloat)}, 1);
  return logits;
}

std::vector<int16_t> Engine::Impl::host_experts(const std::vector<Tensor>& experts) {
  Tensor all = at::cat(experts, 1).to(at::kShort).to(at::kCPU).contiguous();
  return std::vector<int16_t>(all.data_ptr<int16_t>(), all.data_ptr<int16_t>() + all.numel());
}

void Engine::Impl::start_samples(std::vector<Completion>& done) {
  std::vector<BlockCopy> copies;
  std::vector<Sequence*> fresh = sched->start_samples(&copies);
  if (fresh.empty()) return;
  auto blocks_view = pool.view({pool.size(0), num_blocks, bs, D});
  for (const auto& c : copies) blocks_view.select(1, c.to).copy_(blocks_view.select(1, c.from));
  std::vector<Tensor> rows;
  for (Sequence* s : fresh) rows.push_back(prompt_logits.at(s->group->id));
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
  sample_and_advance(at::stack(rows), fresh, row_sampling(fresh), done);
  if (!spec) return;
  // Samples that did not end at their first token wait for their first MTP row.
  const auto& run = sched->running();
  for (size_t i = 0; i < fresh.size(); ++i)
    if (std::find(run.begin(), run.end(), fresh[i]) != run.end())
      pending[fresh[i]] = {fresh[i]->group->prompt_len() - 1, hidden[i].unsqueeze(0), {fresh[i]->tokens.back()}};
}

Engine::Impl::RowSampling Engine::Impl::row_sampling(const std::vector<Sequence*>& seqs,
                                                    const std::vector<int64_t>& ahead) {
  const size_t n = seqs.size();
  RowSampling rs{std::vector<float>(n), std::vector<float>(n), std::vector<float>(n), std::vector<int64_t>(n)};
  for (size_t b = 0; b < n; ++b) {
    const Sequence& s = *seqs[b];
    const auto& p = s.group->req.params;
    rs.temp[b] = (float)p.temperature;
    rs.topp[b] = (float)p.top_p;
    rs.topk[b] = p.top_k;
    const int64_t index = (int64_t)s.tokens.size() + (ahead.empty() ? 0 : ahead[b]);
    rs.u[b] = sample_uniform(p.seed, s.group->req.prompt_index, s.sample, index);
  }
  return rs;
}

void Engine::Impl::sample_and_advance(const Tensor& logits, const std::vector<Sequence*>& seqs, const RowSampling& rs,
                                      std::vector<Completion>& done) {
  auto t0 = std::chrono::steady_clock::now();
  auto [tok, lp] = sample_tokens(logits, rs.temp, rs.topk, rs.topp, rs.u);
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

void Engine::Impl::admit(std::vector<Completion>& done) {
  start_samples(done);
  for (;;) {
    std::vector<Group*> batch = sched->admit(*weight_version);
    if (batch.empty()) break;
    prefill(batch);
    start_samples(done);
  }
}

Tensor Engine::Impl::decode_forward(const Tensor& packed, int64_t B, int64_t nblk) {
  PagedRows in = unpack(packed, B, nblk);
  Tensor x = model->model->embed_tokens(in.tokens);  // (B, H)
  model::RopeTables rope = model->rope_tables(in.positions.view({B, 1}), x.scalar_type());
  std::vector<Tensor> experts;
  // Adopted ("-add_rms_norm" turns it off): each residual add and the RMSNorm after it (the
  // layer's next norm, or the final one) in one kernel; `normed` carries the norm into the next use.
  const bool fuse_add = model::fused::active(x) && model::kernel_adopted("add_rms_norm");
  Tensor normed;
  auto add_then_norm = [&](const Tensor& y, model::RMSNorm& norm) {
    if (fuse_add) {
      auto [sum, out] = model::fused::add_rms_norm(x, y, norm->weight, norm->eps);
      if (sum.defined()) {
        x = sum;
        return out;
      }
    }
    x = x + y;
    return norm(x);
  };
  for (int64_t l = 0; l < L; ++l) {
    auto layer = model->model->layers[l]->as<DecoderLayer>();
    Tensor attn = layer->self_attn->decode(normed.defined() ? normed : layer->input_layernorm(x), rope, pool[l], in.kv);
    Tensor ff_in = add_then_norm(attn, layer->post_attention_layernorm);
    model::RouterImpl::Routing r;
    const bool record = opt.record_routing && layer->moe;
    Tensor ff = layer->feed_forward(ff_in, record ? &r : nullptr);
    if (record) experts.push_back(r.experts);
    normed = add_then_norm(ff, l + 1 < L ? model->model->layers[l + 1]->as<DecoderLayer>()->input_layernorm
                                         : model->model->norm);
  }
  Tensor h = L > 0 ? normed : model->model->norm(x);
  Tensor logits = model->logits(h).to(at::kFloat);  // (B, V)
  if (opt.record_routing) logits = at::cat({logits, at::cat(experts, 1).to(at::kFloat)}, 1);  // exact below 2^24
  if (spec) logits = at::cat({logits, h.to(at::kFloat)}, 1);  // exact: fp32 holds every bf16 value
  return logits;
}

void Engine::Impl::pack_row(std::vector<int64_t>& packed, int64_t rows, int64_t nblk, int64_t r, const Sequence& s,
                            int64_t token, int64_t position, int64_t write_slot, int64_t length) {
  packed[r] = token;
  packed[rows + r] = position;
  packed[2 * rows + r] = write_slot;
  packed[3 * rows + r] = length;
  std::copy(s.table.begin(), s.table.end(), packed.begin() + 4 * rows + r * nblk);
}

Engine::Impl::PagedRows Engine::Impl::unpack(const Tensor& packed, int64_t B, int64_t nblk, int64_t key_start) const {
  PagedRows r;
  model::PagedKV& kv = r.kv;
  r.tokens = packed.narrow(0, 0, B);
  r.positions = packed.narrow(0, B, B);
  kv.write_slots = packed.narrow(0, 2 * B, B);
  kv.lens = packed.narrow(0, 3 * B, B);
  kv.table = packed.narrow(0, 4 * B, B * nblk).view({B, nblk});
  kv.block_size = bs;
  kv.key_start = key_start;
  return r;
}

void Engine::Impl::decode(std::vector<Completion>& done) {
  if (sched->running().empty()) return;
  if (spec) return decode_speculative(done);
  if (overlap) return decode_overlapped(done);
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
    pack_row(host, Bp, nb, b, s, s.tokens.back(), pos, slot(s, pos), pos + 1);
  }
  Tensor host_t = at::from_blob(host.data(), {(int64_t)host.size()}, at::TensorOptions().dtype(at::kLong));
  Tensor logits = use_graphs ? graphs->run(host_t, Bp, nb, B)
                  : invariant ? decode_invariant(host_t.to(model->device()), B, nb)
                              : decode_forward(host_t.to(model->device()), B, nb);
  if (opt.record_routing) {  // each row's experts follow its sequence
    const int64_t V = cfg.vocab_size;
    const std::vector<int16_t> rec = host_experts({logits.narrow(1, V, logits.size(1) - V)});
    logits = logits.narrow(1, 0, V).contiguous();
    const size_t per_token = rec.size() / B;
    for (int64_t b = 0; b < B; ++b)
      seqs[b]->routing.insert(seqs[b]->routing.end(), rec.begin() + b * per_token, rec.begin() + (b + 1) * per_token);
  }

  sample_and_advance(logits, seqs, row_sampling(seqs), done);
  stats.decode_steps += 1;
  stats.decode_tokens += B;
  stats.decode_seconds += seconds_since(t0);
}

void Engine::Impl::refresh_fp8() {
  auto t0 = std::chrono::steady_clock::now();
  stats.fp8_bytes = model::fp8::quantize_model(*model);
  stats.fp8_layers = model::fp8::quantized_layers(*model);
  stats.fp8_quantizations += 1;
  if (pool.defined() && pool.is_cuda()) torch::cuda::synchronize(pool.device().index());
  stats.fp8_seconds += seconds_since(t0);
}

int64_t Engine::Impl::slot(const Sequence& s, int64_t position) const {
  return (int64_t)s.table[position / bs] * bs + position % bs;
}

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
Engine::Engine(std::shared_ptr<model::CausalLM> model, const text::Tokenizer* tokenizer, EngineOptions options)
    : impl_(std::make_unique<Impl>(std::move(model), tokenizer, options)) {
  impl_->weight_version = &weight_version;
}
Engine::~Engine() {
  // A step still in flight (queued for sequences a stop token ended) reads the graphs and the cache.
  if (impl_->flight) impl_->flight->ready.synchronize();
}

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
  if (impl_->fp8 && impl_->fp8_version != weight_version) {
    // The first step refills the copies too: the weights may have changed since construction.
    impl_->refresh_fp8();
    impl_->fp8_version = weight_version;
  }
  model::fp8::Scope fp8_scope(impl_->fp8);
  model::fused::Scope fused_scope(impl_->fused);
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
int64_t Engine::blocks_in_use() const { return impl_->sched->blocks().usable() - impl_->sched->blocks().free(); }
int64_t Engine::running() const { return (int64_t)impl_->sched->running().size(); }
int64_t Engine::waiting() const { return impl_->sched->waiting_prompts() + impl_->sched->unstarted_samples(); }

}  // namespace grpo::rollout

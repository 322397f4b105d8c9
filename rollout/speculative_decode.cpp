// Speculative decoding with the MTP module as the draft (EngineOptions::speculative_mtp): the
// module's prompt rows, its decode forward, and the engine's draft-then-check step.
#include "rollout/engine_impl.h"

namespace grpo::rollout {

// The MTP module's cache rows of the prompt tokens whose next token is known: row i (hidden state
// at i, token i + 1) for i < P - 1, into the slot of position i + 1.
void Engine::Impl::prefill_mtp(const std::vector<Group*>& batch, const Tensor& input, const Tensor& h, int64_t T) {
  const auto dev = model->device();
  const int64_t B = (int64_t)batch.size();
  Tensor next = model::shifted_left(input, 1);
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

// The MTP module over packed rows (as decode_forward's; a row's length counts the slots it reads)
// given the main model's final-norm hidden states h (R, H): writes its cache rows into layer L of
// the pool and returns its next-token logits (R, V) fp32. The slot of position 0 holds no MTP row.
Tensor Engine::Impl::mtp_forward(const Tensor& packed, int64_t R, int64_t nblk, const Tensor& h) {
  PagedRows in = unpack(packed, R, nblk, /*key_start=*/1);
  model::DecoderLayerImpl& m = model->mtp_module(1);
  Tensor x = m.eh_proj(at::cat({m.enorm(m.embed_tokens(in.tokens)), m.hnorm(h)}, -1));
  model::RopeTables rope = model->rope_tables(in.positions.view({R, 1}), x.scalar_type());
  x = x + m.self_attn->decode(m.input_layernorm(x), rope, pool[L], in.kv);
  x = x + m.feed_forward(m.post_attention_layernorm(x));
  return m.mtp_logits(x).to(at::kFloat);
}

// One speculative step of every running sequence, whose last token t_n sits at position n:
// the MTP module reads the sequence's pending rows and drafts d for position n + 1; the policy
// reads t_n and d in one forward (two rows per sequence); d is kept or replaced by the acceptance
// rule, and when kept the policy's token after it comes too: one or two tokens per step.
void Engine::Impl::decode_speculative(std::vector<Completion>& done) {
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
  const int64_t nb = use_graphs ? DecodeGraphs::bucket(nblk) : nblk;
  const int64_t Rm = use_graphs ? DecodeGraphs::bucket(R) : R;
  std::vector<int64_t> mp(4 * Rm + Rm * nb, use_graphs ? dummy_block : 0);
  if (use_graphs) {
    mtp_graphs->pad_rows(mp, Rm, nb, R);
    // A padding row reads two slots of the dummy block: the first is masked as no MTP row.
    for (int64_t p = R; p < Rm; ++p) mp[3 * Rm + p] = 2;
  }
  int64_t r = 0;
  for (const Sequence* s : seqs) {
    const Pending& pd = pending.at(s);
    hidden.push_back(pd.hidden);
    for (size_t k = 0; k < pd.tokens.size(); ++k, ++r) {
      const int64_t i = pd.first_position + (int64_t)k;
      mp[r] = pd.tokens[k];
      mp[Rm + r] = i;
      mp[2 * Rm + r] = slot(*s, i + 1);
      mp[3 * Rm + r] = i + 2;
      for (size_t t = 0; t < s->table.size(); ++t) mp[4 * Rm + r * nb + t] = s->table[t];
    }
    last_rows.push_back(r - 1);
  }
  Tensor mtp_logits;
  if (use_graphs) {
    mtp_hidden.narrow(0, 0, R).copy_(at::cat(hidden));
    mtp_logits = mtp_graphs->run(at::from_blob(mp.data(), {(int64_t)mp.size()}, at::kLong), Rm, nb, R);
  } else {
    mtp_logits = mtp_forward(at::tensor(mp, at::kLong).to(dev), R, nb, at::cat(hidden));
  }
  Tensor draft_logits = mtp_logits.index_select(0, at::tensor(last_rows, at::kLong).to(dev));
  Tensor q = sampling_probs(draft_logits, temp, topk, topp);
  Tensor draft = sample_from(q, device_floats(u_draft));
  Tensor draft_host = draft.to(at::kCPU);
  const int64_t* d = draft_host.data_ptr<int64_t>();

  // 2. The check: rows (t_n at n) and (d at n + 1) of every sequence in one forward.
  const int64_t rows = 2 * B;
  const int64_t Rp = use_graphs ? DecodeGraphs::bucket(rows) : rows;
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
  Tensor out = use_graphs   ? graphs->run(host_t, Rp, nb, rows)
               : invariant ? decode_invariant(host_t.to(dev), rows, nb)
                           : decode_forward(host_t.to(dev), rows, nb);
  // Columns: logits (V), with record_routing each MoE layer's experts, then the hidden state (H).
  const int64_t H = cfg.hidden_size;
  Tensor logits = out.narrow(1, 0, V).view({B, 2, V});
  // A copy: with graphs `out` is the graph's static output, which the next replay overwrites.
  Tensor h = out.narrow(1, out.size(1) - H, H).to(model->dtype(), /*non_blocking=*/false, /*copy=*/true).view({B, 2, -1});
  Tensor l1 = logits.select(1, 0).contiguous(), l2 = logits.select(1, 1).contiguous();
  std::vector<int16_t> records;  // (2B rows, MoE layers x k)
  if (opt.record_routing) records = host_experts({out.narrow(0, 0, rows).narrow(1, V, out.size(1) - V - H)});

  // 3. The verdict, and the policy's token after a kept draft.
  auto ts = std::chrono::steady_clock::now();
  SpeculativeVerdict v = accept_or_resample(sampling_probs(l1, temp, topk, topp), q, draft, device_floats(u_accept),
                                            device_floats(u_residual));
  Tensor bonus = sample_from(sampling_probs(l2, temp, topk, topp), device_floats(u_bonus));
  // With the batch-invariant forward, its fixed-order log-softmax: the training forward's.
  auto log_softmax = [&](const Tensor& l) { return invariant ? model::invariant::log_softmax(l) : l.log_softmax(-1); };
  Tensor lp1 = log_softmax(l1).gather(1, v.token.unsqueeze(1)).squeeze(1);
  Tensor lp2 = log_softmax(l2).gather(1, bonus.unsqueeze(1)).squeeze(1);
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
    if (opt.record_routing) {  // t_n was read, and a kept draft too (finish drops it if the sequence ends there)
      const size_t per_token = records.size() / rows;
      const auto row = records.begin() + 2 * b * per_token;
      seqs[b]->routing.insert(seqs[b]->routing.end(), row, row + (kept ? 2 : 1) * per_token);
    }
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

}  // namespace grpo::rollout

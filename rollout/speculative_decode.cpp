// Speculative decoding with the MTP module as the draft (EngineOptions::speculative_mtp): the
// module's prompt rows, its decode forward, and the engine's draft-then-check step.
#include "rollout/engine_impl.h"
#include "rollout/upload.h"

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
// given the hidden states it combines with the rows' tokens, h (R, H): writes its cache rows into
// layer L of the pool and returns (R, V + H) fp32: its next-token logits, then its own output,
// which a chained draft reads in place of the policy's hidden state (as DeepSeek-V3's module of
// depth k + 1 reads depth k's output). The slot of position 0 holds no MTP row.
Tensor Engine::Impl::mtp_forward(const Tensor& packed, int64_t R, int64_t nblk, const Tensor& h) {
  PagedRows in = unpack(packed, R, nblk, /*key_start=*/1);
  model::DecoderLayerImpl& m = model->mtp_module(1);
  Tensor x = m.eh_proj(at::cat({m.enorm(m.embed_tokens(in.tokens)), m.hnorm(h)}, -1));
  model::RopeTables rope = model->rope_tables(in.positions.view({R, 1}), x.scalar_type());
  x = x + m.self_attn->decode(m.input_layernorm(x), rope, pool[L], in.kv);
  x = x + m.feed_forward(m.post_attention_layernorm(x));
  return at::cat({m.mtp_logits(x).to(at::kFloat), x.to(at::kFloat)}, 1);
}

// One speculative step of every running sequence, whose last token t_n sits at position n, with
// k = num_speculative_tokens drafts:
// 1. the MTP module reads the sequence's pending rows and drafts d_1 for position n + 1; then, k - 1
//    times, it reads its last draft with its own output in place of the policy's hidden state and
//    drafts the next position;
// 2. the policy reads t_n, d_1 .. d_k in one forward (k + 1 rows per sequence);
// 3. the drafts are checked in order by the acceptance rule; the first rejected one is replaced by
//    a draw from the residual and ends the step; when all are kept the policy's token after d_k
//    comes too: 1 to k + 1 tokens per step.
// Draft i (0-based) decides completion index j + i and takes its uniforms there (streams 1-3); the
// token after all k takes stream 0's at j + k. A step that ends earlier leaves the later indices'
// numbers unused by anything it kept, so the next step may draw them anew.
// The drafts never leave the device: the host lays out every row's position, slot and table, the
// drafts' tokens are written into the forwards' inputs on the device, every input goes up from
// pinned memory, and the host waits once, for the step's result.
void Engine::Impl::decode_speculative(std::vector<Completion>& done) {
  auto t0 = std::chrono::steady_clock::now();
  const int64_t k = opt.num_speculative_tokens, K = k + 1;
  sched->grow(/*ahead=*/k);  // the rows of t_n and of the k drafts
  const std::vector<Sequence*> seqs = sched->running();
  const int64_t B = (int64_t)seqs.size(), V = cfg.vocab_size, H = cfg.hidden_size;
  const auto dev = model->device();
  int64_t nblk = 0;
  for (const Sequence* s : seqs) nblk = std::max<int64_t>(nblk, s->table.size());
  const int64_t nb = use_graphs ? DecodeGraphs::bucket(nblk) : nblk;
  // Sampling settings per sequence, and per check row (K rows per sequence, sequence-major).
  std::vector<float> temp(B), topp(B), temp_k(B * K), topp_k(B * K), u_bonus(B);
  std::vector<int64_t> topk(B), topk_k(B * K);
  std::vector<std::vector<float>> u_draft(k, std::vector<float>(B)), u_accept = u_draft, u_residual = u_draft;
  for (int64_t b = 0; b < B; ++b) {
    const Sequence& s = *seqs[b];
    const auto& p = s.group->req.params;
    const int64_t j = (int64_t)s.tokens.size();  // the completion index of the first token decided now
    const int64_t pi = s.group->req.prompt_index;
    temp[b] = (float)p.temperature;
    topp[b] = (float)p.top_p;
    topk[b] = p.top_k;
    for (int64_t i = 0; i < K; ++i) {
      temp_k[b * K + i] = temp[b];
      topp_k[b * K + i] = topp[b];
      topk_k[b * K + i] = topk[b];
    }
    for (int64_t i = 0; i < k; ++i) {
      u_draft[i][b] = stream_uniform(1, p.seed, pi, s.sample, j + i);
      u_accept[i][b] = stream_uniform(2, p.seed, pi, s.sample, j + i);
      u_residual[i][b] = stream_uniform(3, p.seed, pi, s.sample, j + i);
    }
    u_bonus[b] = stream_uniform(0, p.seed, pi, s.sample, j + k);
  }
  auto device_floats = [&](const std::vector<float>& v) { return upload(v, at::kFloat, dev); };

  // 1. The drafts. `mp` packs the module's rows as decode_forward's input: the row of position i
  // (a hidden state at i, the token at i + 1) writes the module's slot of i + 1 and reads i + 2 slots.
  std::vector<Tensor> q(k), draft(k);  // draft[i]: (B) int64 on the device
  Tensor stand_in;                     // (B, H): the module's output at each sequence's last row
  for (int64_t i = 0; i < k; ++i) {
    std::vector<std::pair<int64_t, int64_t>> mtp_rows;  // (sequence, position)
    std::vector<int64_t> tokens, last_rows;
    std::vector<Tensor> hidden;
    for (int64_t b = 0; b < B; ++b) {
      const Sequence* s = seqs[b];
      if (i == 0) {  // the pending rows, whose tokens and policy hidden states are known
        const Pending& pd = pending.at(s);
        hidden.push_back(pd.hidden);
        for (size_t r = 0; r < pd.tokens.size(); ++r) {
          mtp_rows.emplace_back(b, pd.first_position + (int64_t)r);
          tokens.push_back(pd.tokens[r]);
        }
      } else {  // the last draft at n + i, after the module's own row at n + i - 1 (row b; its token on the device)
        mtp_rows.emplace_back(b, s->position() + i - 1);
        tokens.push_back(0);
      }
      last_rows.push_back((int64_t)mtp_rows.size() - 1);
    }
    Tensor h_in = i == 0 ? at::cat(hidden) : stand_in;
    const int64_t R = (int64_t)mtp_rows.size();
    const int64_t Rm = use_graphs ? DecodeGraphs::bucket(R) : R;
    std::vector<int64_t> mp(4 * Rm + Rm * nb, use_graphs ? dummy_block : 0);
    if (use_graphs) {
      mtp_graphs->pad_rows(mp, Rm, nb, R);
      // A padding row reads two slots of the dummy block: the first is masked as no MTP row.
      for (int64_t p = R; p < Rm; ++p) mp[3 * Rm + p] = 2;
    }
    for (int64_t r = 0; r < R; ++r) {
      const Sequence& s = *seqs[mtp_rows[r].first];
      const int64_t pos = mtp_rows[r].second;
      pack_row(mp, Rm, nb, r, s, tokens[r], pos, slot(s, pos + 1), pos + 2);
    }
    DecodeGraphs::Fill fill;  // the previous draft as the tokens of rows 0 .. B - 1
    if (i > 0) fill = [&](const Tensor& packed) { packed.narrow(0, 0, B).copy_(draft[i - 1]); };
    Tensor out;
    if (use_graphs) {
      mtp_hidden.narrow(0, 0, R).copy_(h_in);
      out = mtp_graphs->run(at::from_blob(mp.data(), {(int64_t)mp.size()}, at::kLong), Rm, nb, R, fill);
    } else {
      Tensor in = upload(mp, at::kLong, dev);
      if (fill) fill(in);
      out = mtp_forward(in, R, nb, h_in);
    }
    Tensor last = out.index_select(0, upload(last_rows, at::kLong, dev));  // a copy, past the next replay
    q[i] = sampling_probs(last.narrow(1, 0, V), temp, topk, topp);
    draft[i] = sample_from(q[i], device_floats(u_draft[i]));
    if (i + 1 < k) stand_in = last.narrow(1, V, H).to(model->dtype());
  }

  // 2. The check: rows t_n at n, d_1 at n + 1, ..., d_k at n + k of every sequence in one forward.
  const int64_t rows = K * B;
  const int64_t Rp = use_graphs ? DecodeGraphs::bucket(rows) : rows;
  std::vector<int64_t> host(4 * Rp + Rp * nb, use_graphs ? dummy_block : 0);
  if (use_graphs) graphs->pad_rows(host, Rp, nb, rows);
  for (int64_t b = 0; b < B; ++b) {
    const Sequence& s = *seqs[b];
    const int64_t n = s.position();
    for (int64_t i = 0; i < K; ++i) {
      // The drafts' tokens come on the device.
      pack_row(host, Rp, nb, K * b + i, s, i == 0 ? s.tokens.back() : 0, n + i, slot(s, n + i), n + i + 1);
    }
  }
  Tensor host_t = at::from_blob(host.data(), {(int64_t)host.size()}, at::TensorOptions().dtype(at::kLong));
  // Rows K b + 1 .. K b + k: the drafts d_1 .. d_k.
  const Tensor drafts = at::stack(draft, 1);  // (B, k)
  auto fill = [&](const Tensor& packed) { packed.narrow(0, 0, rows).view({B, K}).narrow(1, 1, k).copy_(drafts); };
  Tensor out;
  if (use_graphs) {
    out = graphs->run(host_t, Rp, nb, rows, fill);
  } else {
    Tensor in = upload(host_t, dev);
    fill(in);
    out = invariant ? decode_invariant(in, rows, nb) : decode_forward(in, rows, nb);
  }
  // Columns: logits (V), with record_routing each MoE layer's experts, then the hidden state (H).
  Tensor logits = out.narrow(1, 0, V).contiguous();  // (K B, V), sequence-major
  // A copy: with graphs `out` is the graph's static output, which the next replay overwrites.
  Tensor h = out.narrow(1, out.size(1) - H, H)
                 .to(model->dtype(), /*non_blocking=*/false, /*copy=*/true)
                 .view({B, K, H});
  std::vector<int16_t> records;  // (K B rows, MoE layers x k)
  if (opt.record_routing) records = host_experts({out.narrow(0, 0, rows).narrow(1, V, out.size(1) - V - H)});

  // 3. The verdicts in order, and the policy's token after the last draft.
  auto ts = std::chrono::steady_clock::now();
  Tensor p = sampling_probs(logits, temp_k, topk_k, topp_k).view({B, K, V});
  std::vector<Tensor> candidate, kept;  // per row i: the token decided at n + 1 + i if the step gets there
  for (int64_t i = 0; i < k; ++i) {
    SpeculativeVerdict v = accept_or_resample(p.select(1, i), q[i], draft[i], device_floats(u_accept[i]),
                                              device_floats(u_residual[i]));
    candidate.push_back(v.token);
    kept.push_back(v.accepted);
  }
  candidate.push_back(sample_from(p.select(1, k), device_floats(u_bonus)));
  Tensor cand = at::stack(candidate, 1);  // (B, K)
  // With the batch-invariant forward, its fixed-order log-softmax: the training forward's.
  Tensor lsm = invariant ? model::invariant::log_softmax(logits) : logits.log_softmax(-1);
  Tensor lp = lsm.view({B, K, V}).gather(2, cand.unsqueeze(2)).squeeze(2);
  Tensor res = at::cat({cand.to(at::kDouble), at::stack(kept, 1).to(at::kDouble), lp.to(at::kDouble)}, 1).to(at::kCPU);
  stats.sample_seconds += seconds_since(ts);
  auto a = res.accessor<double, 2>();  // row b: candidates (K) | kept (k) | log-probs (K)
  std::vector<std::vector<int64_t>> tokens(B);
  std::vector<std::vector<float>> logprobs(B);
  std::unordered_map<const Sequence*, Pending> next;
  for (int64_t b = 0; b < B; ++b) {
    int64_t m = 0;  // drafts kept: the first m, then the residual's draw (or, all kept, the token after)
    while (m < k && a[b][K + m] != 0) ++m;
    for (int64_t i = 0; i <= m; ++i) {
      tokens[b].push_back((int64_t)a[b][i]);
      logprobs[b].push_back((float)a[b][K + k + i]);
    }
    // The module's next rows: the policy's hidden states at n .. n + m with the tokens now after them.
    next[seqs[b]] = {seqs[b]->position(), h[b].narrow(0, 0, m + 1), tokens[b]};
    if (opt.record_routing) {  // t_n and the kept drafts were read (finish drops one the sequence ends at)
      const size_t per_token = records.size() / rows;
      const auto first = records.begin() + K * b * per_token;
      seqs[b]->routing.insert(seqs[b]->routing.end(), first, first + (m + 1) * per_token);
    }
    stats.draft_tokens += k;
    stats.accepted_drafts += m;
    stats.decode_tokens += m + 1;
  }
  sched->advance(seqs, tokens, logprobs, done);
  pending.clear();
  for (const Sequence* s : sched->running()) pending[s] = std::move(next.at(s));
  stats.decode_steps += 1;
  stats.decode_seconds += seconds_since(t0);
}

}  // namespace grpo::rollout

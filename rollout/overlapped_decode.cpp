// Overlapped decode steps (EngineOptions::overlap_steps): step t + 1 is queued on the device before
// the host has seen step t's tokens. Its rows of sequences whose token is still in flight read that
// token from the device (copied into the graph's input by the replay's fill), at the position after
// it; the host then waits for step t alone (an event recorded after its copy to pinned memory) and
// hands its tokens to the scheduler while the device runs step t + 1. The sampling of a row uses the
// same uniform number as the synchronous loop (the token's index in its sequence), so a step of the
// same batch gives the same tokens.
#include <unordered_map>

#include "rollout/engine_impl.h"
#include "rollout/upload.h"

namespace grpo::rollout {

void Engine::Impl::decode_overlapped(std::vector<Completion>& done) {
  auto t0 = std::chrono::steady_clock::now();
  // The rows of the step in flight whose sequences still run (the rest ended: a stop token, a cancel).
  std::unordered_map<const Sequence*, int64_t> in_flight;
  const std::vector<Sequence*>& running = sched->running();
  if (flight) {
    std::unordered_map<const Sequence*, int64_t> row_of;
    for (size_t i = 0; i < flight->seqs.size(); ++i) row_of[flight->seqs[i]] = (int64_t)i;
    for (Sequence* s : running)
      if (auto it = row_of.find(s); it != row_of.end() && flight->serials[it->second] == s->serial)
        in_flight[s] = it->second;
  }

  // The next step: every running sequence but those whose token in flight is their last by length.
  std::vector<Sequence*> seqs;
  std::vector<int64_t> ahead;  // 1 where the row's input token is the one in flight
  for (Sequence* s : running) {
    const int64_t a = in_flight.count(s) ? 1 : 0;
    if (a && (int64_t)s->tokens.size() + 1 >= s->group->max_new) continue;
    seqs.push_back(s);
    ahead.push_back(a);
  }
  std::unique_ptr<Flight> next;
  if (!seqs.empty()) {
    const int64_t B = (int64_t)seqs.size();
    int64_t nblk = 0;
    for (int64_t b = 0; b < B; ++b) {
      sched->grow(*seqs[b], ahead[b]);
      nblk = std::max<int64_t>(nblk, seqs[b]->table.size());
    }
    const int64_t Bp = DecodeGraphs::bucket(B), nb = DecodeGraphs::bucket(nblk);
    std::vector<int64_t> host(4 * Bp + Bp * nb, dummy_block);
    graphs->pad_rows(host, Bp, nb, B);
    std::vector<int64_t> rows, from;  // rows whose token is in flight, and their rows there
    for (int64_t b = 0; b < B; ++b) {
      const Sequence& s = *seqs[b];
      const int64_t pos = s.position() + ahead[b];
      pack_row(host, Bp, nb, b, s, ahead[b] ? 0 : s.tokens.back(), pos, slot(s, pos), pos + 1);
      if (ahead[b]) {
        rows.push_back(b);
        from.push_back(in_flight.at(&s));
      }
    }
    const auto dev = pool.device();
    DecodeGraphs::Fill fill;
    if (!rows.empty()) {
      Tensor rows_d = upload(rows, at::kLong, dev), from_d = upload(from, at::kLong, dev);
      Tensor tokens = flight->tokens;
      fill = [rows_d, from_d, tokens](const Tensor& packed) {
        packed.index_copy_(0, rows_d, tokens.index_select(0, from_d));
      };
    }
    // A first run captures its graph, which must not meet work still queued on the stream.
    if (!graphs->has(Bp, nb)) torch::cuda::synchronize(dev.index());
    Tensor host_t = at::from_blob(host.data(), {(int64_t)host.size()}, at::TensorOptions().dtype(at::kLong));
    Tensor logits = graphs->run(host_t, Bp, nb, B, fill);

    const RowSampling rs = row_sampling(seqs, ahead);
    auto [tok, lp] = sample_tokens(logits, rs.temp, rs.topk, rs.topp, rs.u);
    if (invariant) lp = model::invariant::log_softmax(logits).gather(1, tok.unsqueeze(1)).squeeze(1);
    next = std::make_unique<Flight>();
    next->seqs = seqs;
    for (Sequence* s : seqs) next->serials.push_back(s->serial);
    next->tokens = tok;
    next->host = at::empty({2, B}, at::TensorOptions().dtype(at::kDouble).pinned_memory(true));
    next->host.copy_(at::stack({tok.to(at::kDouble), lp.to(at::kDouble)}), /*non_blocking=*/true);
    next->ready.record(c10::cuda::getCurrentCUDAStream(dev.index()));
    stats.decode_steps += 1;
  }

  // The step in flight: its tokens to the scheduler while the device runs the next one.
  if (flight) {
    flight->ready.synchronize();
    auto acc = flight->host.accessor<double, 2>();
    std::vector<Sequence*> landed;
    std::vector<int64_t> tokens;
    std::vector<float> logprobs;
    for (Sequence* s : running) {  // the scheduler's order
      auto it = in_flight.find(s);
      if (it == in_flight.end()) continue;
      landed.push_back(s);
      tokens.push_back((int64_t)acc[0][it->second]);
      logprobs.push_back((float)acc[1][it->second]);
    }
    if (!landed.empty()) sched->advance(landed, tokens, logprobs, done);
    stats.decode_tokens += (int64_t)landed.size();
  }
  flight = std::move(next);
  stats.decode_seconds += seconds_since(t0);
}

}  // namespace grpo::rollout

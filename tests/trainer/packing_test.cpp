// Packed SFT equals unpacked SFT: the packer keeps every example whole with its own segment,
// positions and targets, and the model's packed forward gives every trained token the log-prob
// (and the loss the gradients) that the example alone gives. Plain causal attention over the same
// packed rows must differ, or the test could not tell.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "model/checkpoint.h"
#include "model/causal_lm.h"
#include "trainer/packing.h"
#include "util/error.h"

using namespace grpo;
using namespace grpo::trainer;
using at::Tensor;

namespace {

const char* kTiny = R"({
  "model_type": "deepseek_v3", "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
  "moe_intermediate_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
  "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
  "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 3, "n_group": 4, "topk_group": 2,
  "first_k_dense_replace": 1, "norm_topk_prob": true, "routed_scaling_factor": 2.5,
  "max_position_embeddings": 256, "num_nextn_predict_layers": 0})";

std::vector<SftSequence> examples(int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<SftSequence> out;
  for (int i = 0; i < count; ++i) {
    SftSequence s;
    const int prompt = 2 + (int)(rng() % 9), completion = 1 + (int)(rng() % 12);
    for (int t = 0; t < prompt + completion; ++t) {
      s.ids.push_back((int64_t)(rng() % 97));
      s.trained.push_back(t >= prompt);
    }
    out.push_back(s);
  }
  return out;
}

Tensor longs(const std::vector<int64_t>& v, int64_t B, int64_t T) {
  return at::from_blob(const_cast<int64_t*>(v.data()), {B, T}, at::TensorOptions().dtype(at::kLong)).clone();
}

// Rows padded to one batch: padding has its own segment (-1), position 0 and no target.
struct Batch {
  Tensor ids, segments, positions, targets;
};
Batch batch_of(const std::vector<PackedRow>& rows) {
  int64_t T = 0;
  for (const auto& r : rows) T = std::max(T, r.length());
  const int64_t B = (int64_t)rows.size();
  std::vector<int64_t> ids(B * T, 0), seg(B * T, -1), pos(B * T, 0), tgt(B * T, -100);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < rows[b].length(); ++t) {
      ids[b * T + t] = rows[b].ids[t];
      seg[b * T + t] = rows[b].segments[t];
      pos[b * T + t] = rows[b].positions[t];
      tgt[b * T + t] = rows[b].targets[t];
    }
  return {longs(ids, B, T), longs(seg, B, T), longs(pos, B, T), longs(tgt, B, T)};
}

}  // namespace

TEST(Packing, RowsHoldWholeExamplesWithinTheLengthAndLoseNone) {
  auto seqs = examples(40, 3);
  auto p = pack_sequences(seqs, 32);
  std::map<int64_t, int> seen;
  for (const auto& r : p.rows) {
    EXPECT_LE(r.length(), 32);
    for (size_t k = 0; k < r.examples.size(); ++k) {
      const SftSequence& s = seqs[r.examples[k]];
      ++seen[r.examples[k]];
      // The example's tokens are contiguous, in order, with positions 0..n-1 and its own targets.
      std::vector<int64_t> ids, tgt;
      for (int64_t t = 0; t < r.length(); ++t)
        if (r.segments[t] == (int64_t)k) {
          EXPECT_EQ(r.positions[t], (int64_t)ids.size());
          ids.push_back(r.ids[t]);
          tgt.push_back(r.targets[t]);
        }
      EXPECT_EQ(ids, s.ids);
      EXPECT_EQ(tgt, sequence_targets(s));
    }
  }
  EXPECT_EQ(seen.size(), 40u);
  for (auto& kv : seen) EXPECT_EQ(kv.second, 1);
  EXPECT_LT(p.rows.size(), 40u / 2);  // several examples per row
  // Unpacked: one per row, in input order.
  auto u = pack_sequences(seqs, 32, false);
  ASSERT_EQ(u.rows.size(), 40u);
  for (int i = 0; i < 40; ++i) EXPECT_EQ(u.rows[i].examples, std::vector<int64_t>{i});
  // Truncation and sequences with nothing to learn.
  SftSequence long_one{std::vector<int64_t>(50, 5), std::vector<uint8_t>(50, 1)};
  SftSequence nothing{{1, 2, 3}, {0, 0, 0}};
  SftSequence late{std::vector<int64_t>(40, 5), std::vector<uint8_t>(40, 0)};
  late.trained[39] = 1;  // its only trained token is cut off
  auto t = pack_sequences({long_one, nothing, late}, 32);
  EXPECT_EQ(t.truncated, 2);
  EXPECT_EQ(t.dropped, 2);
  ASSERT_EQ(t.rows.size(), 1u);
  EXPECT_EQ(t.rows[0].length(), 32);
  EXPECT_THROW(pack_sequences({SftSequence{{1, 2}, {1}}}, 32), Error);
}

TEST(Packing, PackedLossAndGradientsEqualUnpackedTraining) {
  auto model = std::make_shared<grpo::model::CausalLM>(parse_model_config(kTiny, "tiny"));
  grpo::model::init_weights(*model, 5);
  {
    at::NoGradGuard g;
    for (auto& p : model->parameters())
      if (p.dim() > 1) p.mul_(10);  // far from uniform attention and routing
  }
  auto seqs = examples(12, 7);
  auto loss_and_grads = [&](const std::vector<PackedRow>& rows, std::vector<Tensor>* per_row_lp) {
    model->zero_grad();
    Tensor total = at::zeros({}, at::kFloat);
    int64_t n = 0;
    for (const auto& r : rows) {  // each row alone as (1, T): no padding involved
      Batch b = batch_of({r});
      Tensor lp = model->packed_target_logprobs(b.ids, b.segments, b.positions, b.targets);
      if (per_row_lp) per_row_lp->push_back(lp.detach());
      total = total - lp.sum();
      n += lp.numel();
    }
    Tensor loss = total / n;
    loss.backward();
    std::vector<Tensor> grads;
    for (auto& p : model->parameters()) grads.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
    return std::make_pair(loss.item<double>(), grads);
  };
  auto packed = pack_sequences(seqs, 40), alone = pack_sequences(seqs, 40, false);
  ASSERT_LT(packed.rows.size(), 6u);
  std::vector<Tensor> lp_packed, lp_alone;
  auto [loss_p, grads_p] = loss_and_grads(packed.rows, &lp_packed);
  auto [loss_a, grads_a] = loss_and_grads(alone.rows, &lp_alone);
  EXPECT_NEAR(loss_p, loss_a, 1e-6 * std::abs(loss_a));
  // Token by token: each trained token of each example has the log-prob it has alone.
  for (size_t r = 0; r < packed.rows.size(); ++r) {
    const auto& row = packed.rows[r];
    int64_t j = 0;
    std::vector<int64_t> used(row.examples.size(), 0);
    for (int64_t t = 0; t < row.length(); ++t) {
      if (row.targets[t] < 0) continue;
      const int64_t k = row.segments[t], ex = row.examples[k];
      EXPECT_NEAR(lp_packed[r][j].item<float>(), lp_alone[ex][used[k]].item<float>(), 1e-5)
          << "row " << r << " token " << t << " (example " << ex << ")";
      ++used[k];
      ++j;
    }
  }
  double max_diff = 0, max_grad = 0;
  for (size_t i = 0; i < grads_p.size(); ++i) {
    max_diff = std::max(max_diff, (grads_p[i] - grads_a[i]).abs().max().item<double>());
    max_grad = std::max(max_grad, grads_a[i].abs().max().item<double>());
  }
  EXPECT_LT(max_diff, 1e-5 * std::max(1.0, max_grad)) << "largest gradient " << max_grad;

  // The same rows with plain causal attention across examples (one segment per row) and running
  // positions: clearly different, so the comparison above can fail.
  std::vector<PackedRow> leaky = packed.rows;
  for (auto& r : leaky)
    for (int64_t t = 0; t < r.length(); ++t) {
      r.segments[t] = 0;
      r.positions[t] = t;
    }
  auto [loss_l, grads_l] = loss_and_grads(leaky, nullptr);
  EXPECT_GT(std::abs(loss_l - loss_a), 1e-3 * std::abs(loss_a));
}

TEST(Packing, PaddedBatchOfPackedRowsEqualsRowByRow) {
  auto model = std::make_shared<grpo::model::CausalLM>(parse_model_config(kTiny, "tiny"));
  grpo::model::init_weights(*model, 9);
  at::NoGradGuard g;
  auto packed = pack_sequences(examples(10, 11), 30);
  Batch all = batch_of(packed.rows);
  Tensor together = model->packed_target_logprobs(all.ids, all.segments, all.positions, all.targets);
  std::vector<Tensor> each;
  for (const auto& r : packed.rows) {
    Batch b = batch_of({r});
    each.push_back(model->packed_target_logprobs(b.ids, b.segments, b.positions, b.targets));
  }
  EXPECT_LT((together - at::cat(each)).abs().max().item<double>(), 1e-5);
}

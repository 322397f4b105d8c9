// The paged MLA decode kernel against a float64 reference of the absorbed attention: rows read
// their keys through shuffled block tables, with lengths that end inside a block, a first key
// skipped (the MTP layer's cache), a row with no keys, head counts that fill one 16-head tile, part
// of one, and more than one, and row widths that are and are not multiples of 16. And MLA's decode
// with the kernel against its gathered form and an fp32 model, and with its prologue in one kernel
// (on trial) against the chain; the decode kernel's pipelined form likewise. CUDA only (skipped
// elsewhere).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "model/deepseek.h"
#include "model/fused_kernels.h"
#include "model/kernel_trial.h"
#include "model/layers.h"

#ifdef GRPO_PAGED_MLA_CUDA
#include "model/paged_mla_cuda.h"
#endif

using namespace grpo;
using namespace grpo::model;
using at::Tensor;

namespace {

struct Case {
  int64_t heads, rank, rope, block_size, key_start;
  std::vector<int64_t> lens;
};

// The paged cache of a few rows: blocks handed out in a shuffled order, so that a kernel ignoring
// the tables (or reading them with the wrong block size) reads other rows' keys.
struct Paged {
  Tensor cache, table, lens;  // on the device
  int64_t nblk = 0;
};

Paged make_paged(const Case& c, at::Device dev, uint64_t seed) {
  const int64_t B = (int64_t)c.lens.size(), D = c.rank + c.rope;
  const int64_t longest = *std::max_element(c.lens.begin(), c.lens.end());
  Paged p;
  p.nblk = (longest + c.block_size - 1) / c.block_size + 1;  // one spare block past the longest row
  std::vector<int64_t> ids(B * p.nblk + 3);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(seed));
  at::manual_seed(seed);
  p.cache = at::randn({(int64_t)ids.size() * c.block_size, D}).to(dev, at::kBFloat16);
  p.table = at::tensor(std::vector<int64_t>(ids.begin(), ids.begin() + B * p.nblk)).view({B, p.nblk}).to(dev);
  p.lens = at::tensor(c.lens).to(dev);
  return p;
}

// softmax(scale * q . k) . latent over keys [key_start, len) of each row, in float64.
Tensor reference(const Tensor& q, const Paged& p, const Case& c, double scale) {
  const int64_t B = q.size(0), R = c.rank;
  Tensor cache = p.cache.to(at::kCPU, at::kDouble), table = p.table.cpu(), qd = q.to(at::kCPU, at::kDouble);
  Tensor out = at::zeros({B, c.heads, R}, at::kDouble);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<int64_t> rows;
    for (int64_t pos = c.key_start; pos < c.lens[b]; ++pos)
      rows.push_back(table[b][pos / c.block_size].item<int64_t>() * c.block_size + pos % c.block_size);
    if (rows.empty()) continue;
    Tensor k = cache.index_select(0, at::tensor(rows));             // (n, D)
    Tensor probs = at::softmax(at::matmul(qd[b], k.t()) * scale, -1);  // (heads, n)
    out[b] = at::matmul(probs, k.narrow(1, 0, R));
  }
  return out;
}

}  // namespace

#ifdef GRPO_PAGED_MLA_CUDA
namespace {

// decode(q, paged, case, scale) against the float64 reference on rows of every kind above.
template <typename Decode>
void expect_equals_reference(Decode decode) {
  std::vector<int64_t> many;  // 300 rows: one split a row, so pass 1 writes the output itself
  for (int64_t i = 0; i < 300; ++i) many.push_back(1 + (i * 37) % 160);
  const std::vector<Case> cases = {
      {16, 512, 64, 16, 0, many},
      {16, 512, 64, 16, 0, {1, 7, 33, 200, 517, 1100}},  // DeepSeek-V2/V3's widths, one head tile
      {16, 512, 64, 16, 1, {1, 2, 64, 65, 300}},          // the MTP layer's first key skipped; row 0 has none
      {4, 64, 16, 4, 0, {3, 5, 90}},                      // width 80: a zero tail pads it to 96
      {20, 128, 64, 8, 0, {40, 129, 2049}},               // two head tiles, the second partly empty
  };
  uint64_t seed = 7;
  for (const Case& c : cases) {
    SCOPED_TRACE("heads " + std::to_string(c.heads) + ", rank " + std::to_string(c.rank) + ", key_start " +
                 std::to_string(c.key_start));
    const Paged p = make_paged(c, at::kCUDA, seed++);
    ASSERT_TRUE(cuda::paged_mla_supported(p.cache, p.cache, c.rank));
    const double scale = 1.0 / std::sqrt(192.0);
    Tensor q = (at::randn({(int64_t)c.lens.size(), c.heads, c.rank + c.rope}) * 2).to(at::kCUDA, at::kBFloat16);
    Tensor got = decode(q, p, c, scale);
    Tensor want = reference(q, p, c, scale);
    const double err = (got.to(at::kCPU, at::kDouble) - want).abs().max().item<double>();
    // bf16 weights into the second product and a bf16 output: a few parts in a thousand of values
    // whose spread is about 1. A wrong key, a wrong length or a missed rescale is off by 0.1 or more.
    EXPECT_LT(err, 0.02);
    for (size_t b = 0; b < c.lens.size(); ++b) {
      if (c.lens[b] <= c.key_start) EXPECT_EQ(got[b].abs().max().item<float>(), 0.0f) << "a row without keys";
    }
  }
}

}  // namespace
#endif

TEST(PagedMla, KernelEqualsReferenceOnCuda) {
#ifndef GRPO_PAGED_MLA_CUDA
  GTEST_SKIP() << "built without the CUDA kernels";
#else
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  KernelTrialScope first_form("");
  expect_equals_reference([](const Tensor& q, const Paged& p, const Case& c, double scale) {
    return cuda::paged_mla_decode(q, p.cache, p.table, p.lens, c.block_size, c.key_start, c.rank, scale);
  });
#endif
}

// The pipelined form in each of its compiled shapes (the rank-512 cases; the other ranks have
// 32 keys x 2 alone and take the first form for the rest), through its entry point and, on trial,
// through paged_mla_decode.
TEST(PagedMla, PipelinedFormEqualsReferenceOnCuda) {
#ifndef GRPO_PAGED_MLA_CUDA
  GTEST_SKIP() << "built without the CUDA kernels";
#else
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (const auto& [keys, stages] : std::vector<std::pair<int, int>>{{32, 2}, {32, 3}, {16, 3}, {16, 4}}) {
    SCOPED_TRACE(std::to_string(keys) + " keys x " + std::to_string(stages));
    expect_equals_reference([keys = keys, stages = stages](const Tensor& q, const Paged& p, const Case& c, double scale) {
      return cuda::paged_mla_decode_pipelined(q, p.cache, p.table, p.lens, c.block_size, c.key_start, c.rank, scale,
                                              keys, stages);
    });
  }
  KernelTrialScope trial("mla_decode_pipeline");
  expect_equals_reference([](const Tensor& q, const Paged& p, const Case& c, double scale) {
    return cuda::paged_mla_decode(q, p.cache, p.table, p.lens, c.block_size, c.key_start, c.rank, scale);
  });
#endif
}

TEST(PagedMla, DecodeMatchesGatheredFormOnCuda) {
#ifndef GRPO_PAGED_MLA_CUDA
  GTEST_SKIP() << "built without the CUDA kernels";
#else
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  ModelConfig cfg;
  cfg.model_type = "deepseek_v2";
  cfg.hidden_size = 256;
  cfg.num_attention_heads = 16;
  cfg.q_lora_rank = std::nullopt;
  cfg.kv_lora_rank = 512;
  cfg.qk_nope_head_dim = 128;
  cfg.qk_rope_head_dim = 64;
  cfg.v_head_dim = 128;
  cfg.rms_norm_eps = 1e-6;
  at::manual_seed(3);
  MLA fp32(cfg);
  for (auto& w : fp32->parameters())
    if (w.dim() > 1) w.data().normal_(0, 0.05);
  MLA bf(cfg);
  {
    at::NoGradGuard g;
    for (auto& kv : fp32->named_parameters()) bf->named_parameters()[kv.key()].copy_(kv.value());
  }
  bf->to(at::kCUDA, at::kBFloat16);
  fp32->to(at::kCUDA);
  const Case c{16, 512, 64, 16, 0, {5, 70, 513}};
  const Paged p = make_paged(c, at::kCUDA, 11);
  const int64_t B = 3, bs = c.block_size;
  std::vector<int64_t> slots, positions;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t pos = c.lens[b] - 1;  // each row's new token is its last key
    positions.push_back(pos);
    slots.push_back(p.table[b][pos / bs].item<int64_t>() * bs + pos % bs);
  }
  PagedKV kv;
  kv.write_slots = at::tensor(slots).to(at::kCUDA);
  kv.table = p.table;
  kv.lens = p.lens;
  kv.block_size = bs;  // the gathered form builds its indices from the tables (PagedKV::gather_index)
  Tensor x = at::randn({B, cfg.hidden_size}, at::TensorOptions().device(at::kCUDA));
  Tensor pos = at::tensor(positions).to(at::kCUDA).view({B, 1});
  const Tensor freqs = (pos.to(at::kFloat).unsqueeze(-1) * rope_inv_freq(cfg).to(at::kCUDA)).unsqueeze(2);
  auto run = [&](MLA& m, at::ScalarType dt, bool paged) {
    MLAImpl::paged_kernel() = paged;
    Tensor cache = p.cache.to(dt);
    RopeTables rope{freqs.cos().to(dt), freqs.sin().to(dt)};
    Tensor out = m->decode(x.to(dt), rope, cache, kv).to(at::kFloat);
    MLAImpl::paged_kernel() = true;
    return std::make_pair(out, cache.to(at::kFloat));
  };
  auto [want, cache_f] = run(fp32, at::kFloat, false);
  auto [paged, cache_p] = run(bf, at::kBFloat16, true);
  auto [gathered, cache_g] = run(bf, at::kBFloat16, false);
  EXPECT_TRUE(at::equal(cache_p, cache_g)) << "both forms write the same cache rows";
  const double scale = want.abs().max().item<double>();
  const double err_paged = (paged - want).abs().max().item<double>() / scale;
  const double err_gathered = (gathered - want).abs().max().item<double>() / scale;
  // The kernel keeps the scores in fp32 where the gathered form rounds them to bf16: it should be
  // no further from the fp32 model than the gathered form (bf16 weights dominate both).
  EXPECT_LT(err_paged, 0.05);
  EXPECT_LT(err_paged, 1.25 * err_gathered + 1e-3) << "paged " << err_paged << ", gathered " << err_gathered;

  // Inside the fused kernels' Scope, the prologue in one kernel (adopted, "mla_decode_prologue")
  // against the chain: the same cache rows, and the output within a bf16 rounding (the last product
  // writes its result in (B, heads, dv) order, which may take another cuBLAS kernel).
  auto fused_run = [&](const char* kernels) {
    KernelTrialScope trial(kernels);
    fused::Scope on(true);
    at::NoGradGuard g;
    return run(bf, at::kBFloat16, true);
  };
  auto [chain, cache_chain] = fused_run("-mla_decode_prologue");
  auto [one, cache_one] = fused_run("");
  EXPECT_TRUE(at::equal(cache_one, cache_chain)) << "the same cache rows";
  EXPECT_LT((one - chain).abs().max().item<double>() / scale, 1e-2);
  EXPECT_LT((one - want).abs().max().item<double>() / scale, 0.05);
#endif
}

// The batch-invariant form with runs of one sequence's tokens (a prefill, a training forward):
// with four rows a block (query_runs), every row's result is the bits
// it gets in a block of its own. Sequences of 5, 300 and 701 tokens (runs that end inside a group
// of four, rows whose keys stop short of the group's last key and of a 256-key split), then rows
// of different sequences side by side (a pass per row), at V2-Lite's widths and at rank 64; and
// rows of one split, whose output pass 1 writes, as in calls of several.
TEST(PagedMla, QueryTilesGiveEachRowItsOwnBitsOnCuda) {
#ifndef GRPO_PAGED_MLA_CUDA
  GTEST_SKIP() << "built without the CUDA kernels";
#else
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (const Case& c : {Case{16, 512, 64, 16, 0, {5, 300, 701}}, Case{20, 64, 16, 8, 0, {5, 300, 701}}}) {
    SCOPED_TRACE("heads " + std::to_string(c.heads) + ", rank " + std::to_string(c.rank));
    const Paged p = make_paged(c, at::kCUDA, 21);
    std::vector<int64_t> starts, lens;  // the tokens of each sequence in turn, then the first token of each
    for (size_t i = 0; i < c.lens.size(); ++i)
      for (int64_t pos = 0; pos < c.lens[i]; ++pos) {
        starts.push_back((int64_t)i * p.nblk);
        lens.push_back(pos + 1);
      }
    for (int k = 0; k < 6; ++k) {
      starts.push_back((int64_t)(k % c.lens.size()) * p.nblk);
      lens.push_back(c.lens[k % c.lens.size()] - k);
    }
    const int64_t N = (int64_t)starts.size(), longest = *std::max_element(lens.begin(), lens.end());
    const Tensor st = at::tensor(starts).to(at::kCUDA), ln = at::tensor(lens).to(at::kCUDA);
    const Tensor table = p.table.reshape({-1});
    Tensor q = (at::randn({N, c.heads, c.rank + c.rope}) * 2).to(at::kCUDA, at::kBFloat16);
    const double scale = 1.0 / std::sqrt(192.0);
    const Tensor alone = cuda::paged_mla_attention_invariant(q, p.cache, table, st, ln, longest, c.block_size, c.rank,
                                                             scale, /*query_runs=*/false);
    const Tensor runs = cuda::paged_mla_attention_invariant(q, p.cache, table, st, ln, longest, c.block_size, c.rank,
                                                            scale, /*query_runs=*/true);
    EXPECT_TRUE(at::equal(runs, alone));
    // Rows of at most 256 keys in a call of one split (pass 1 writes the output) against the same
    // rows in the calls above (more splits, the second pass combining them): the same bits.
    std::vector<int64_t> few;
    for (int64_t n = 0; n < N; n += 7)
      if (lens[n] <= 256) few.push_back(n);
    const Tensor idx = at::tensor(few).to(at::kCUDA);
    const Tensor one_split = cuda::paged_mla_attention_invariant(q.index_select(0, idx), p.cache, table, st.index_select(0, idx),
                                                                 ln.index_select(0, idx), 256, c.block_size, c.rank, scale);
    EXPECT_TRUE(at::equal(one_split, runs.index_select(0, idx)));
    // And each row as a decode step would give it: itself alone in the call.
    for (int64_t n : {(int64_t)0, (int64_t)4, (int64_t)304, N - 1}) {
      const Tensor one = cuda::paged_mla_attention_invariant(q.narrow(0, n, 1), p.cache, table, st.narrow(0, n, 1),
                                                             ln.narrow(0, n, 1), longest, c.block_size, c.rank, scale);
      EXPECT_TRUE(at::equal(one, runs.narrow(0, n, 1))) << "row " << n;
    }
  }
#endif
}

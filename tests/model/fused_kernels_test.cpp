// The fused inference kernels (model/fused_kernels.h) against the ATen chains they replace.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/_grouped_mm.h>
#include <c10/cuda/CUDAGuard.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "common/chi_square.h"
#include "common/tensor_checks.h"
#include "common/tiny_models.h"
#include "model/fused_kernels.h"
#include "model/kernel_trial.h"
#include "model/layers.h"
#include "model/moe.h"

namespace grpo::model {
namespace {

using at::Tensor;
using grpo::testing::max_rel;

const at::TensorOptions kCuda = at::TensorOptions().device(at::kCUDA);

TEST(FusedKernels, OffOutsideAScopeAndOnCpu) {
  Tensor cpu = at::randn({2, 4});
  RMSNorm norm(4, 1e-6);
  at::NoGradGuard g;
  Tensor want = norm(cpu);
  EXPECT_FALSE(fused::active(cpu));
  fused::Scope on(true);
  EXPECT_FALSE(fused::active(cpu));  // the kernels are CUDA's
  EXPECT_TRUE(at::equal(norm(cpu), want));
}

TEST(FusedKernelsCuda, OnlyInsideAScopeWithoutGradients) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  Tensor x = at::ones({2, 4}, kCuda);
  EXPECT_FALSE(fused::active(x));
  fused::Scope on(true);
  EXPECT_FALSE(fused::active(x));  // gradients on: training forwards keep ATen's kernels
  at::NoGradGuard g;
  EXPECT_TRUE(fused::active(x));
  fused::Scope off(false);
  EXPECT_FALSE(fused::active(x));
}

// RoPE rounds where ATen's chain rounds: equal to the bit, in fp32 and bf16, both pairings, on a
// strided view (the queries' rope columns).
TEST(FusedKernelsCuda, RopeEqualsAtenBitForBit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(0);
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (bool interleave : {true, false}) {
      const int64_t B = 3, T = 5, heads = 4, d = 16;
      Tensor q = at::randn({B, T, heads, 24 + d}, kCuda.dtype(dtype)) * 3;
      Tensor x = q.narrow(-1, 24, d);
      Tensor angle = at::rand({B, T, 1, d / 2}, kCuda) * 40;
      RopeTables rope{(angle.cos() * 1.3).to(dtype), (angle.sin() * 1.3).to(dtype)};
      at::NoGradGuard g;
      Tensor want = apply_rope(x, rope, interleave);
      fused::Scope on(true);
      Tensor got = apply_rope(x, rope, interleave);
      EXPECT_TRUE(at::equal(got, want)) << "dtype " << dtype << " interleave " << interleave << ": "
                                        << (got.to(at::kFloat) - want.to(at::kFloat)).abs().max().item<float>();
      EXPECT_TRUE(at::equal(fused::rope(x, rope, interleave), want));
      // A table of another shape is not the kernel's: the ATen form runs.
      RopeTables wide{rope.cos.expand({B, T, heads, d / 2}), rope.sin.expand({B, T, heads, d / 2})};
      EXPECT_FALSE(fused::rope(x, wide, interleave).defined());
    }
}

TEST(FusedKernelsCuda, NormAndSwigluAgreeWithAten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(1);
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    RMSNorm norm(96, 1e-6);
    MLP mlp(96, 40);
    norm->to(at::kCUDA, dtype);
    mlp->to(at::kCUDA, dtype);
    at::NoGradGuard g;
    norm->weight.uniform_(0.5, 1.5);
    for (auto& p : mlp->parameters()) p.uniform_(-0.3, 0.3);
    Tensor x = at::randn({7, 96}, kCuda.dtype(dtype)) * 4;
    Tensor want_norm = norm(x), want_mlp = mlp(x);
    fused::Scope on(true);
    Tensor got_norm = norm(x), got_mlp = mlp(x);
    // RMSNorm sums the squares in another order: one rounding of the dtype apart at most.
    const float tol = dtype == at::kFloat ? 4e-6f : 8e-3f;
    EXPECT_LT(max_rel(got_norm, want_norm), tol) << dtype;
    // SwiGLU rounds as ATen does.
    Tensor gate = at::randn({7, 40}, kCuda.dtype(dtype)) * 3, up = at::randn({7, 40}, kCuda.dtype(dtype));
    EXPECT_TRUE(at::equal(fused::swiglu(gate, up), at::silu(gate) * up)) << dtype;
    EXPECT_LT(max_rel(got_mlp, want_mlp), tol) << dtype;
  }
}

// A residual add and the RMSNorm after it in one kernel (adopted, "add_rms_norm") against ATen's add
// and the fused RMSNorm: both the sum and the normed rows the same bits; rows of V2-Lite's width,
// of 4,096 and of a width that is no multiple of the block.
TEST(FusedKernelsCuda, AddRmsNormEqualsTheChain) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(8);
  at::NoGradGuard no_grad;
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (int64_t H : {2048, 4096, 7})
      for (int64_t N : {1, 5, 300}) {
        SCOPED_TRACE(std::string(c10::toString(dt)) + " H " + std::to_string(H) + " N " + std::to_string(N));
        const Tensor x = at::randn({N, H}, kCuda.dtype(dt)) * 4, y = at::randn({N, H}, kCuda.dtype(dt));
        const Tensor w = at::rand({H}, kCuda.dtype(dt)) + 0.5;
        const Tensor want_sum = x + y;
        const Tensor want = fused::rms_norm(want_sum, w, 1e-6);
        const auto [sum, out] = fused::add_rms_norm(x, y, w, 1e-6);
        ASSERT_TRUE(sum.defined());
        EXPECT_TRUE(at::equal(sum, want_sum));
        EXPECT_TRUE(at::equal(out, want));
      }
  EXPECT_FALSE(fused::add_rms_norm(at::zeros({2, 8}, kCuda), at::zeros({2, 8}, kCuda), at::ones({4}, kCuda), 1e-6)
                   .first.defined());
}

// MLA's decode prologue (adopted, "mla_decode_prologue") against the chain it replaces inside a
// Scope (the fused RMSNorm and RoPE, the concatenations, the cache write): the cache rows and the
// assembled query the same bits; rows written at shuffled slots, q a strided view as the
// projection's, both RoPE layouts, bf16 and fp32, V2-Lite's widths.
TEST(FusedKernelsCuda, MlaDecodePrologueEqualsTheChain) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(7);
  at::NoGradGuard no_grad;
  fused::Scope on(true);
  const int64_t nh = 16, dn = 128, dr = 64, r = 512, D = r + dr, S = 700;
  const double eps = 1e-6;
  for (auto dt : {at::kBFloat16, at::kFloat})
    for (bool interleave : {true, false})
      for (int64_t B : {1, 5, 300}) {
        SCOPED_TRACE(std::string(c10::toString(dt)) + (interleave ? " interleaved" : " rotate-half") + " B " +
                     std::to_string(B));
        const auto o = kCuda.dtype(dt);
        const Tensor q = at::randn({B, nh, dn + dr + 8}, o).narrow(-1, 0, dn + dr);
        const Tensor comp = at::randn({B, D}, o) * 3;
        const Tensor w = at::rand({r}, o) + 0.5;
        const Tensor q_lat = at::bmm(q.narrow(-1, 0, dn).transpose(0, 1), at::randn({nh, dn, r}, o) * 0.05);
        const Tensor angle = at::rand({B, 1, 1, dr / 2}, kCuda) * 6;
        const RopeTables rope{angle.cos().to(dt), angle.sin().to(dt)};
        const Tensor slots = at::randperm(S, kCuda.dtype(at::kLong)).narrow(0, 0, B).contiguous();
        const Tensor cache0 = at::randn({S, D}, o);

        const Tensor lat = fused::rms_norm(comp.narrow(-1, 0, r), w, eps);
        const Tensor kpe = apply_rope(comp.narrow(-1, r, dr).view({B, 1, 1, dr}), rope, interleave).view({B, dr});
        Tensor want_cache = cache0.clone();
        want_cache.index_copy_(0, slots, at::cat({lat, kpe}, -1));
        const Tensor q_pe = apply_rope(q.narrow(-1, dn, dr).unsqueeze(1), rope, interleave).squeeze(1);
        const Tensor want_qc = at::cat({q_lat.transpose(0, 1), q_pe}, -1);

        Tensor cache = cache0.clone();
        const Tensor qc = fused::mla_decode_prologue(q, q_lat, comp, w, eps, rope, interleave, slots, cache);
        ASSERT_TRUE(qc.defined());
        EXPECT_TRUE(at::equal(cache, want_cache));
        EXPECT_TRUE(at::equal(qc, want_qc));
      }
  // Where it does not apply (here a cache of another dtype), the caller's chain runs.
  const auto b16 = kCuda.dtype(at::kBFloat16);
  Tensor fp32_cache = at::zeros({8, D}, kCuda);
  const RopeTables rope{at::ones({1, 1, 1, dr / 2}, b16), at::zeros({1, 1, 1, dr / 2}, b16)};
  EXPECT_FALSE(fused::mla_decode_prologue(at::zeros({1, nh, dn + dr}, b16), at::zeros({nh, 1, r}, b16),
                                          at::zeros({1, D}, b16), at::ones({r}, b16), eps, rope, true,
                                          at::zeros({1}, kCuda.dtype(at::kLong)), fp32_cache)
                   .defined());
}

// The grouping: rows by expert in pair order (a stable sort's), the counts, their running ends,
// and each pair's row.
TEST(FusedKernelsCuda, GroupByExpertIsTheStableSort) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(2);
  for (int64_t N : {1, 5, 300, 2000}) {
    const int64_t E = 64, k = 6;
    Tensor experts = std::get<1>(at::rand({N, E}, kCuda).topk(k, -1));
    fused::ExpertGroups g = fused::group_by_expert(experts, E);
    Tensor order = std::get<1>(experts.reshape({-1}).sort(/*stable=*/true, 0, false));
    EXPECT_TRUE(at::equal(g.token, at::div(order, k, "floor"))) << N;
    Tensor counts = at::bincount(experts.reshape({-1}), {}, E);
    EXPECT_TRUE(at::equal(g.counts, counts)) << N;
    EXPECT_TRUE(at::equal(g.ends, counts.cumsum(0).to(at::kInt))) << N;
    EXPECT_TRUE(at::equal(g.inverse.index_select(0, order), at::arange(N * k, kCuda.dtype(at::kLong)))) << N;
  }
}

// A whole MoE layer (routing, grouped experts, shared expert) inside and outside a Scope; and the
// combination against ATen's weighted index_add when the slots' sum has one order (k = 1) and
// when the slots are added in another order.
TEST(FusedKernelsCuda, MoeLayerAgreesWithAten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  auto m = grpo::testing::tiny(grpo::testing::kTinyV3, 1);
  m->to_device_dtype(at::kCUDA, at::kBFloat16);
  auto moe = m->model->layers[1]->as<DecoderLayer>()->moe;
  at::manual_seed(3);
  at::NoGradGuard g;
  for (int64_t N : {1, 16, 256}) {
    Tensor x = at::randn({1, N, 32}, kCuda.dtype(at::kBFloat16));
    RouterImpl::Routing want_routing, got_routing;
    Tensor want = moe(x, &want_routing);
    Tensor got;
    {
      fused::Scope on(true);
      got = moe(x, &got_routing);
    }
    // The same experts for each token: the router kernel lists them best first, ATen's topk (unsorted)
    // in an order of its own.
    EXPECT_TRUE(at::equal(std::get<0>(got_routing.experts.sort(1)), std::get<0>(want_routing.experts.sort(1)))) << N;
    // The slots are summed in slot order here and in atomics' order by index_add: a rounding of
    // bf16 apart at most per sum.
    EXPECT_LT(max_rel(got, want), 2e-2) << N;

    // One slot: the sum has a single order, so the combination equals ATen's to the bit.
    Tensor flat = x.view({N, 32});
    Tensor first = want_routing.experts.narrow(1, 0, 1).contiguous();
    Tensor w = want_routing.weights.narrow(1, 0, 1).contiguous();
    Tensor one_aten = moe->experts(flat, first, w);
    fused::ExpertGroups groups = fused::group_by_expert(first, moe->experts->num_experts);
    Tensor ys = moe->experts->products(flat.index_select(0, groups.token), groups.counts, groups.ends);
    EXPECT_TRUE(at::equal(fused::combine_experts(ys, groups, w, {}), one_aten)) << N;
    Tensor shared = at::randn({N, 32}, kCuda.dtype(at::kBFloat16));
    EXPECT_TRUE(at::equal(fused::combine_experts(ys, groups, w, shared), one_aten + shared)) << N;
  }
}

// The router kernel against RouterImpl's ATen chain on the same logits, for DeepSeek-V3's routing
// (sigmoid, noaux_tc with a bias, groups scored by their best two, normalised and scaled), at 8 and
// 256 experts, for V2's group-limited softmax, and for plain greedy softmax: the same experts
// wherever the choice is not within rounding of a tie, each with the same weight, and the same
// scores. The kernel lists a token's experts best first; the ATen chain's top-k is unsorted (on
// CUDA in expert order), so each row's pairs are compared in expert order.
TEST(FusedKernelsCuda, RouterEqualsAten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  using grpo::testing::replace_in_config;
  const std::string v3 = grpo::testing::kTinyV3;
  const std::string wide = replace_in_config(
      replace_in_config(v3, "\"n_routed_experts\": 8", "\"n_routed_experts\": 256"),
      "\"num_experts_per_tok\": 3, \"n_group\": 4, \"topk_group\": 2",
      "\"num_experts_per_tok\": 8, \"n_group\": 8, \"topk_group\": 4");
  const std::string v2_groups = replace_in_config(
      v3, "\"norm_topk_prob\": true", "\"norm_topk_prob\": false, \"scoring_func\": \"softmax\", \"topk_method\": \"group_limited_greedy\"");
  const std::string greedy = replace_in_config(
      replace_in_config(v3, "\"n_group\": 4, \"topk_group\": 2", "\"n_group\": 1, \"topk_group\": 1"),
      "\"norm_topk_prob\": true", "\"norm_topk_prob\": false, \"scoring_func\": \"softmax\", \"topk_method\": \"greedy\"");
  at::manual_seed(6);
  at::NoGradGuard no_grad;
  for (const auto& [name, text] : {std::pair{"v3", v3}, {"v3 256 experts", wide}, {"v2 groups", v2_groups},
                                   {"greedy", greedy}}) {
    const ModelConfig c = parse_model_config(text, name);
    Router router(c);
    router->to(at::kCUDA);
    router->weight.normal_(0, 1.0 / std::sqrt((double)c.hidden_size));  // logits of about unit spread
    if (router->e_score_correction_bias.defined()) router->e_score_correction_bias.uniform_(-0.1, 0.1);
    for (int64_t N : {1, 7, 300}) {
      Tensor x = at::randn({N, c.hidden_size}, kCuda);
      RouterImpl::Routing want = router->forward(x, Tensor());
      Tensor logits = at::linear(x, router->weight);
      fused::Routing got = fused::route(logits, router->e_score_correction_bias, c);
      ASSERT_TRUE(got.experts.defined()) << name;
      EXPECT_LT(max_rel(got.scores, want.scores), 1e-6) << name << " N " << N;
      // Rows whose k-th and (k+1)-th choices are within rounding may order them either way.
      Tensor choice = want.scores + (router->e_score_correction_bias.defined() ? router->e_score_correction_bias : at::zeros({}, kCuda));
      Tensor sorted = std::get<0>(choice.sort(-1, true));
      Tensor clear = (sorted.narrow(1, 0, c.num_experts_per_tok + 1).diff(1, 1).abs() > 1e-5).all(1);
      auto [got_experts, got_order] = got.experts.sort(1);
      auto [want_experts, want_order] = want.experts.sort(1);
      const Tensor got_weights = got.weights.gather(1, got_order), want_weights = want.weights.gather(1, want_order);
      Tensor same = (got_experts == want_experts).all(1);
      EXPECT_TRUE(same.logical_or(clear.logical_not()).all().item<bool>()) << name << " N " << N;
      EXPECT_GT(clear.sum().item<int64_t>(), N / 2) << name << ": the check must compare most rows";
      // Best first: each row's chosen (biased) scores descend, up to rounding.
      const Tensor chosen = choice.gather(1, got.experts);
      const int64_t k = c.num_experts_per_tok;
      EXPECT_TRUE((chosen.narrow(1, 0, k - 1) + 1e-5 >= chosen.narrow(1, 1, k - 1)).all().item<bool>()) << name << " N " << N;
      Tensor w_diff = (got_weights - want_weights).abs().masked_select(same.unsqueeze(1).expand_as(got_weights));
      if (w_diff.numel() > 0) {
        EXPECT_LT(w_diff.max().item<float>(), 1e-6 * c.routed_scaling_factor * 4) << name;
      }
    }
    // Rows of garbage (a CUDA graph's padding): NaN logits, all or some, and -inf ones. Each row
    // still gets k distinct experts in range, so that the grouping downstream stays in bounds.
    Tensor bad = at::randn({4, c.n_routed_experts}, kCuda);
    bad[0].fill_(NAN);
    bad[1].narrow(0, 0, c.n_routed_experts / 2).fill_(NAN);
    bad[2].fill_(-INFINITY);
    bad[3].narrow(0, 1, c.n_routed_experts - 1).fill_(-INFINITY);
    fused::Routing odd = fused::route(bad, router->e_score_correction_bias, c);
    ASSERT_TRUE(odd.experts.defined()) << name;
    const Tensor e = std::get<0>(odd.experts.sort(1));
    EXPECT_TRUE(((e >= 0) & (e < c.n_routed_experts)).all().item<bool>()) << name << ": " << odd.experts;
    EXPECT_TRUE((e.diff(1, 1) > 0).all().item<bool>()) << name << ": an expert chosen twice: " << odd.experts;
  }
}

// The sampler in one kernel ("fused_sampler") against softmax(z / T): 40,000 draws of one
// row of 3,000 or 1,001 at T = 0.7 pass the chi-square test, and fail it against T = 1 (the test
// can fail); at every width (also 60,000: chunks of 60 values a thread), each draw is the token
// the chain's inverse CDF gives for the same uniform number, up to the CDF's rounding;
// log-probabilities are log_softmax(z)'s; T = 0 gives the first largest logit; a row's draw is the
// same alone as in a batch; rows of a width that is no multiple of 4 (read a value at a time) and
// logits of -inf, never drawn.
TEST(FusedKernelsCuda, SampleFollowsTheSoftmaxAndTheChain) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(11);
  for (int64_t V : {3000, 1001, 60000}) {
    SCOPED_TRACE("V " + std::to_string(V));
    const bool many = V <= 3000;  // enough draws a token for the chi-square test
    const int64_t N = many ? 40000 : 2000;
    Tensor z = at::randn({V}, kCuda) * 2.5;
    z.narrow(0, 7, 5).fill_(-INFINITY);
    const Tensor rows = z.unsqueeze(0).expand({N, V}).contiguous();
    const Tensor u = at::rand({N}, kCuda), temp = at::full({N}, 0.7f, kCuda);
    const auto [tok, lp] = fused::sample(rows, temp, u);
    ASSERT_TRUE(tok.defined());
    const Tensor counts = at::bincount(tok, {}, V).to(at::kDouble).cpu();
    EXPECT_EQ(counts.narrow(0, 7, 5).sum().item<double>(), 0.0) << "a logit of -inf was drawn";
    auto pvalue = [&](double t) {
      const Tensor p = (z.to(at::kDouble) / t).softmax(-1).cpu();
      const std::vector<double> expect(p.data_ptr<double>(), p.data_ptr<double>() + V);
      const std::vector<double> count(counts.data_ptr<double>(), counts.data_ptr<double>() + V);
      return chi_square_pvalue(count, expect);
    };
    if (many) {
      EXPECT_GT(pvalue(0.7), 1e-3);
      EXPECT_LT(pvalue(1.0), 1e-6);
    }
    // The chain's draw for the same numbers (rollout/sampling.cpp's, without filters). The two sum
    // the CDF in other orders (about 1e-7 apart a boundary), so a draw whose number falls that near
    // a boundary may land on its other side: every draw lies within 1e-5 of its token's interval
    // of the chain's CDF, and most are the chain's own.
    const Tensor probs = (rows / temp.unsqueeze(1)).softmax(-1), cdf = probs.cumsum(-1);
    const Tensor target = u * cdf.select(1, V - 1);
    const Tensor chain = at::searchsorted(cdf, target.unsqueeze(1), false, true).squeeze(1);
    const Tensor hi = cdf.gather(1, tok.unsqueeze(1)).squeeze(1);
    const Tensor lo = hi - probs.gather(1, tok.unsqueeze(1)).squeeze(1);
    EXPECT_LT(at::maximum(lo - target, target - hi).max().item<float>(), 1e-5) << "a draw away from its interval";
    const int64_t differ = tok.ne(chain).sum().item<int64_t>();
    EXPECT_LE(differ, N / 20) << differ << " of " << N << " draws differ from the chain's";
    const Tensor want_lp = rows.log_softmax(-1).gather(1, tok.unsqueeze(1)).squeeze(1);
    EXPECT_LT((lp - want_lp).abs().max().item<float>(), 1e-5);
    // Greedy rows, and rows alone against the batch.
    const Tensor greedy = at::zeros({N}, kCuda);
    const auto [gt, glp] = fused::sample(rows, greedy, u);
    EXPECT_TRUE(gt.eq(z.argmax()).all().item<bool>());
    EXPECT_LT((glp - z.log_softmax(-1)[z.argmax()]).abs().max().item<float>(), 1e-5);
    for (int64_t i : {(int64_t)0, (int64_t)17, N - 1}) {
      const auto [one, one_lp] = fused::sample(rows.narrow(0, i, 1).contiguous(), temp.narrow(0, i, 1).contiguous(),
                                               u.narrow(0, i, 1).contiguous());
      EXPECT_EQ(one.item<int64_t>(), tok[i].item<int64_t>()) << i;
      EXPECT_EQ(one_lp.item<float>(), lp[i].item<float>()) << i;
    }
  }
  // Where it does not apply: the chain runs.
  EXPECT_FALSE(fused::sample(at::zeros({2, 8}), at::ones({2}), at::zeros({2})).first.defined());
  EXPECT_FALSE(fused::sample(at::zeros({2, 8}, kCuda).to(at::kBFloat16), at::ones({2}, kCuda), at::zeros({2}, kCuda))
                   .first.defined());
}

// The linear layers of a decode step's few rows ("linear_rows") against the fp32 product
// of the same bf16 values: within a bf16 rounding, and no further than cuBLAS's bf16 product; at
// 1-8 rows, V2-Lite's projection shapes and a small odd one, with and without a bias, x of three
// dimensions keeping its shape; undefined past 8 rows, for K not a multiple of 8, and for fp32.
// With eight pieces a lane in flight (on trial, "deep_rows") a lane adds the same pieces in the same
// order: the same bits.
TEST(FusedKernelsCuda, LinearRowsAgreeWithTheProduct) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(12);
  const auto b16 = kCuda.dtype(at::kBFloat16);
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{3072, 2048}, {576, 2048}, {2048, 10944}, {37, 24}})
    for (int64_t M : {1, 2, 3, 5, 8})
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K) +
                     (with_bias ? " bias" : ""));
        const Tensor x = at::randn({M, 1, K}, b16), w = (at::randn({N, K}, kCuda) * 0.05).to(at::kBFloat16);
        const Tensor b = with_bias ? at::randn({N}, b16) : Tensor();
        const Tensor got = fused::linear_rows(x, w, b);
        ASSERT_TRUE(got.defined());
        EXPECT_EQ(got.sizes(), (std::vector<int64_t>{M, 1, N}));
        {
          KernelTrialScope deep("deep_rows");
          EXPECT_TRUE(at::equal(fused::linear_rows(x, w, b), got));
        }
        const Tensor exact = at::linear(x.to(at::kFloat), w.to(at::kFloat), with_bias ? b.to(at::kFloat) : Tensor());
        const Tensor cublas = at::linear(x, w, b);
        const double scale = exact.abs().max().item<double>();
        const double err = (got.to(at::kFloat) - exact).abs().max().item<double>();
        const double err_cublas = (cublas.to(at::kFloat) - exact).abs().max().item<double>();
        EXPECT_LT(err, 8e-3 * scale);
        EXPECT_LE(err, 1.5 * err_cublas + 1e-3 * scale) << "cuBLAS " << err_cublas;
      }
  EXPECT_FALSE(fused::linear_rows(at::zeros({9, 16}, b16), at::zeros({4, 16}, b16), {}).defined());
  EXPECT_FALSE(fused::linear_rows(at::zeros({2, 12}, b16), at::zeros({4, 12}, b16), {}).defined());
  EXPECT_FALSE(fused::linear_rows(at::zeros({2, 16}, kCuda), at::zeros({4, 16}, kCuda), {}).defined());
}

// got (rows, N), grouped rows xs (rows, K) times their experts' weights w (E, N, K) transposed,
// against the fp32 product of the same bf16 values: within a bf16 rounding of it, and no further
// from it than the grouped GEMM (at::_grouped_mm).
void expect_near_grouped_product(const Tensor& got, const Tensor& xs, const Tensor& w, const fused::ExpertGroups& g) {
  const int64_t E = w.size(0);
  const Tensor expert_of_row = at::repeat_interleave(at::arange(E, kCuda.dtype(at::kLong)), g.counts);
  const Tensor exact =
      at::bmm(xs.to(at::kFloat).unsqueeze(1), w.index_select(0, expert_of_row).to(at::kFloat).transpose(1, 2)).squeeze(1);
  const Tensor grouped = at::_grouped_mm(xs, w.transpose(1, 2), g.ends);
  const double scale = exact.abs().max().item<double>();
  const double err = (got.to(at::kFloat) - exact).abs().max().item<double>();
  const double err_grouped = (grouped.to(at::kFloat) - exact).abs().max().item<double>();
  EXPECT_LT(err, 8e-3 * scale);
  EXPECT_LE(err, 1.5 * err_grouped + 1e-3 * scale) << "grouped GEMM " << err_grouped;
}

// The routed experts' products of a decode step's few tokens (with linear_rows): each
// grouped row times its expert's weights, against the fp32 product of the same bf16 values and no
// further from it than the grouped GEMM (at::_grouped_mm), at 1, 3 and 8 tokens of 6 experts in 64,
// at gate_up's and down's K; experts without rows leave nothing behind. Also 5 tokens whose choices
// repeat among 3 experts (rows of garbage may route so): groups of up to 30 rows, 8 a pass. On trial
// ("deep_rows"), the same bits.
TEST(FusedKernelsCuda, GroupedRowsAgreeWithTheGroupedProduct) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(13);
  const int64_t E = 64, k = 6;
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{512, 2048}, {2048, 1408}})
    for (int64_t T : {1, 3, 8, -5}) {
      const bool repeats = T < 0;
      T = std::abs(T);
      SCOPED_TRACE("tokens " + std::to_string(T) + " N " + std::to_string(N) + " K " + std::to_string(K) +
                   (repeats ? " repeating" : ""));
      const Tensor order = at::rand({T, E}, kCuda).argsort(/*stable=*/false, /*dim=*/1);
      // k distinct experts a token, or k of the first 3 with repeats
      const Tensor experts = repeats ? at::randint(3, {T, k}, kCuda.dtype(at::kLong)) : order.narrow(1, 0, k).contiguous();
      if (repeats) {
        EXPECT_GT(at::bincount(experts.flatten()).max().item<int64_t>(), 8);  // 30 pairs in 3 groups
      }
      const fused::ExpertGroups g = fused::group_by_expert(experts, E);
      const Tensor x = at::randn({T, K}, kCuda.dtype(at::kBFloat16)), xs = x.index_select(0, g.token);
      const Tensor w = (at::randn({E, N, K}, kCuda) * 0.05).to(at::kBFloat16);
      const Tensor got = fused::grouped_rows(xs, w, g.ends);
      ASSERT_TRUE(got.defined());
      {
        KernelTrialScope deep("deep_rows");
        EXPECT_TRUE(at::equal(fused::grouped_rows(xs, w, g.ends), got));
      }
      expect_near_grouped_product(got, xs, w, g);
    }
  EXPECT_FALSE(fused::grouped_rows(at::zeros({2, 16}, kCuda), at::zeros({4, 8, 16}, kCuda),
                                   at::zeros({4}, kCuda.dtype(at::kInt)))
                   .defined());
}

// The routed experts' products of a decode step of more tokens in tiles (on trial, "expert_tiles"):
// against the fp32 product of the same bf16 values and no further from it than the grouped GEMM, at
// 16, 128 and 256 tokens of 6 experts in 64 (up to about 40 rows an expert), at gate_up's and down's
// shapes and at one whose N and K are not multiples of the tiles; and tokens that all pick the same
// 6 of 64 experts (100 rows an expert: two passes of 64). Undefined for odd N.
TEST(FusedKernelsCuda, GroupedTilesAgreeWithTheGroupedProduct) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(14);
  const int64_t E = 64, k = 6;
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{2816, 2048}, {2048, 1408}, {200, 72}})
    for (int64_t T : {16, 128, 256, -100}) {
      const bool same = T < 0;
      T = std::abs(T);
      SCOPED_TRACE("tokens " + std::to_string(T) + " N " + std::to_string(N) + " K " + std::to_string(K) +
                   (same ? " all on the same experts" : ""));
      const Tensor order = at::rand({T, E}, kCuda).argsort(/*stable=*/false, /*dim=*/1);
      const Tensor experts = same ? at::arange(k, kCuda.dtype(at::kLong)).mul(7).repeat({T, 1})
                                  : order.narrow(1, 0, k).contiguous();
      const fused::ExpertGroups g = fused::group_by_expert(experts, E);
      const Tensor x = at::randn({T, K}, kCuda.dtype(at::kBFloat16)), xs = x.index_select(0, g.token);
      const Tensor w = (at::randn({E, N, K}, kCuda) * 0.05).to(at::kBFloat16);
      const Tensor got = fused::grouped_tiles(xs, w, g.ends);
      ASSERT_TRUE(got.defined());
      expect_near_grouped_product(got, xs, w, g);
    }
  EXPECT_FALSE(fused::grouped_tiles(at::zeros({2, 16}, kCuda.dtype(at::kBFloat16)),
                                    at::zeros({4, 7, 16}, kCuda.dtype(at::kBFloat16)), at::zeros({4}, kCuda.dtype(at::kInt)))
                   .defined());
}

// The few-row products launched as dependents of the kernel before them (adopted,
// "dependent_launch"): a residual add and norm, a product of its output, a product of that one's
// output (each launched while the one before it may still run, so a read of its input before the
// wait would show), and the experts' grouped product, eagerly and replayed from a CUDA graph: the
// bits of the ordinary launches.
TEST(FusedKernelsCuda, DependentLaunchesGiveTheBitsOfOrdinaryOnes) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  at::manual_seed(14);
  at::NoGradGuard no_grad;
  const auto b16 = kCuda.dtype(at::kBFloat16);
  const int64_t E = 64;
  const Tensor x = at::randn({1, 2048}, b16), r = at::randn({1, 2048}, b16), w = at::randn({2048}, b16);
  const Tensor w1 = (at::randn({3072, 2048}, kCuda) * 0.02).to(at::kBFloat16);
  const Tensor w2 = (at::randn({2048, 3072}, kCuda) * 0.02).to(at::kBFloat16);
  const Tensor we = (at::randn({E, 256, 2048}, kCuda) * 0.02).to(at::kBFloat16);
  const fused::ExpertGroups g = fused::group_by_expert(at::randperm(E, kCuda.dtype(at::kLong)).narrow(0, 0, 6).view({1, 6}), E);
  auto chain = [&] {
    auto [sum, normed] = fused::add_rms_norm(x, r, w, 1e-6);
    const Tensor a = fused::linear_rows(normed, w1, {});
    const Tensor b = fused::linear_rows(a, w2, {});
    const Tensor c = fused::grouped_rows(b.index_select(0, g.token), we, g.ends);
    return std::vector<Tensor>{a, b, c};
  };
  std::vector<Tensor> want, got, replayed;
  {
    KernelTrialScope ordinary("-dependent_launch");
    want = chain();
  }
  KernelTrialScope dependent("");
  got = chain();
  {
    at::cuda::CUDAGraph graph;
    const at::cuda::CUDAStream stream = at::cuda::getStreamFromPool();
    const c10::cuda::CUDAStreamGuard guard(stream);
    chain();  // warm-up outside the capture
    stream.synchronize();
    graph.capture_begin();
    replayed = chain();
    graph.capture_end();
    graph.replay();
    stream.synchronize();
  }
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(want[i].defined() && got[i].defined() && replayed[i].defined()) << i;
    EXPECT_TRUE(at::equal(got[i], want[i])) << "product " << i << " launched as a dependent";
    EXPECT_TRUE(at::equal(replayed[i], want[i])) << "product " << i << " replayed from a CUDA graph";
  }
}

}  // namespace
}  // namespace grpo::model

// FP8 weights for the rollout engine (model/fp8.h): the block and row quantizers against their
// definition, the emulated products against a float64 sum over the quantized values and scales
// (which catches a scale applied to the wrong block), which layers take a copy, the scope that
// switches them on; on a Hopper GPU, the CUDA quantizer bit for bit against the ATen reference
// and the FP8 kernels against the emulation.
#include "model/fp8.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <iostream>

#include "common/tensor_checks.h"
#include "common/tiny_models.h"
#include "model/causal_lm.h"
#include "model/deepseek.h"
#include "model/linear.h"
#include "model/moe.h"

#ifdef GRPO_FP8_CUDA
#include "model/fp8_cuda.h"
#endif

using namespace grpo;
using namespace grpo::model;
using at::Tensor;
using grpo::testing::max_rel;

namespace {

// Values spread over many binades, block by block: a scale read from the wrong 128 x 128 block (or
// the wrong row group) then misplaces values by large factors.
Tensor spread(int64_t rows, int64_t cols, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Tensor x = at::randn({rows, cols}, gen, at::TensorOptions().dtype(at::kFloat));
  Tensor exps = at::randint(-6, 7, {(rows + 127) / 128 + 1, (cols + 63) / 64 + 1}, gen, at::TensorOptions().dtype(at::kFloat));
  Tensor f = at::pow(2.0, exps).repeat_interleave(128, 0).repeat_interleave(64, 1).narrow(0, 0, rows).narrow(1, 0, cols);
  return x * f;
}

// sum_k (qa[m,k] sa[m,k/128]) (qw[n,k] sw[n/128,k/128]) in float64, from the quantized tensors'
// own values: the product the FP8 kernels promise, up to the order of their fp32 sums.
Tensor reference_product(const Tensor& qa, const Tensor& sa, const fp8::Weight& w) {
  const int64_t K = qa.size(1), N = w.q.size(0);
  Tensor a = qa.to(at::kDouble) * sa.to(at::kDouble).repeat_interleave(128, 1).narrow(1, 0, K);
  Tensor b = w.q.narrow(1, 0, K).to(at::kDouble) *
             w.scale.to(at::kDouble).repeat_interleave(128, 0).repeat_interleave(128, 1).narrow(0, 0, N).narrow(1, 0, K);
  return at::matmul(a, b.t());
}

}  // namespace

TEST(Fp8, WeightBlocksScaleByTheirOwnMaximum) {
  Tensor w = spread(200, 300, 1);
  fp8::Weight q;
  fp8::quantize_weight(w, q);
  ASSERT_EQ(q.q.scalar_type(), at::kFloat8_e4m3fn);
  // K padded with zero columns to 512: four column blocks, the last all zeros (scale 1).
  ASSERT_EQ(q.q.sizes(), (at::IntArrayRef{200, 512}));
  ASSERT_EQ(q.scale.sizes(), (at::IntArrayRef{2, 4}));
  EXPECT_TRUE((q.scale.select(1, 3) == 1).all().item<bool>());
  EXPECT_TRUE((q.q.narrow(1, 300, 212).to(at::kFloat) == 0).all().item<bool>());
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      Tensor block = w.narrow(0, 128 * i, std::min<int64_t>(128, 200 - 128 * i)).narrow(1, 128 * j, std::min<int64_t>(128, 300 - 128 * j));
      EXPECT_EQ(q.scale[i][j].item<float>(), block.abs().max().item<float>() / 448.0f) << i << "," << j;
    }
  // e4m3 keeps 3 mantissa bits: a normal value is within 2^-4 of itself; subnormals within half
  // their spacing, 2^-10 times the scale.
  Tensor back = fp8::dequantize(q);
  Tensor s = q.scale.repeat_interleave(128, 0).repeat_interleave(128, 1).narrow(0, 0, 200).narrow(1, 0, 300);
  Tensor bound = w.abs() * 0.0625 + s * std::ldexp(1.0, -10);
  EXPECT_TRUE(((back - w).abs() <= bound).all().item<bool>());
  // The largest value of every block lands on 448 exactly.
  EXPECT_EQ(q.q.to(at::kFloat).abs().max().item<float>(), 448.0f);
}

TEST(Fp8, RequantizingOverwritesTheCopiesInPlace) {
  Tensor w = spread(64, 96, 2);
  fp8::Weight q;
  fp8::quantize_weight(w, q);
  void* data = q.q.data_ptr();
  void* scale = q.scale.data_ptr();
  fp8::quantize_weight(w * 3, q);
  EXPECT_EQ(q.q.data_ptr(), data);  // CUDA graphs hold these addresses
  EXPECT_EQ(q.scale.data_ptr(), scale);
  fp8::Weight fresh;
  fp8::quantize_weight(w * 3, fresh);
  EXPECT_TRUE(at::equal(q.q.view(at::kByte), fresh.q.view(at::kByte)));
  EXPECT_TRUE(at::equal(q.scale, fresh.scale));
  EXPECT_THROW(fp8::quantize_weight(spread(80, 96, 2), q), std::exception);
}

TEST(Fp8, ExpertStacksScalePerOutputRow) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  Tensor w = at::randn({4, 48, 32}, gen) * at::pow(2.0, at::randint(-5, 6, {4, 48, 1}, gen).to(at::kFloat));
  fp8::Weight q;
  fp8::quantize_weight(w, q, /*rows=*/true);
  ASSERT_EQ(q.scale.sizes(), (at::IntArrayRef{4, 48}));
  EXPECT_TRUE(at::equal(q.scale, std::get<0>(w.abs().max(-1)) / 448.0f));
  Tensor back = fp8::dequantize(q, /*rows=*/true);
  EXPECT_TRUE(((back - w).abs() <= w.abs() * 0.0625 + q.scale.unsqueeze(-1) * std::ldexp(1.0, -10)).all().item<bool>());
}

TEST(Fp8, ActivationScalesAreGroupsOf128InColumnMajorLayout) {
  Tensor x = spread(5, 300, 4);
  x[2].zero_();
  auto [q, s] = fp8::quantize_activations_reference(x, 128);
  ASSERT_EQ(s.sizes(), (at::IntArrayRef{5, 3}));
  EXPECT_EQ(s.stride(0), 1);  // _scaled_mm reads 1 x 128 scales M-contiguous
  EXPECT_EQ(s.stride(1), 5);
  for (int64_t g = 0; g < 3; ++g)
    EXPECT_EQ(s[0][g].item<float>(), x[0].narrow(0, 128 * g, std::min<int64_t>(128, 300 - 128 * g)).abs().max().item<float>() / 448.0f);
  EXPECT_TRUE((s[2] == 1).all().item<bool>());  // an all-zero group
  EXPECT_TRUE((q[2].to(at::kFloat) == 0).all().item<bool>());
  // Padded for cuBLAS: rows to a multiple of 4, columns to the weight's 512; zero groups scale 1.
  auto [qp, sp] = fp8::quantize_activations_reference(x, 128, 512, 4);
  ASSERT_EQ(qp.sizes(), (at::IntArrayRef{8, 512}));
  ASSERT_EQ(sp.sizes(), (at::IntArrayRef{8, 4}));
  EXPECT_EQ(sp.stride(1), 8);
  EXPECT_TRUE(at::equal(sp.narrow(0, 0, 5).narrow(1, 0, 3), s));
  EXPECT_TRUE((sp.narrow(0, 5, 3) == 1).all().item<bool>() && (sp.select(1, 3) == 1).all().item<bool>());
  EXPECT_TRUE(at::equal(qp.narrow(0, 0, 5).narrow(1, 0, 300).view(at::kByte), q.view(at::kByte)));
  auto [qr, sr] = fp8::quantize_activations_reference(x, 0);
  ASSERT_EQ(sr.sizes(), (at::IntArrayRef{5}));
  EXPECT_EQ(sr[1].item<float>(), x[1].abs().max().item<float>() / 448.0f);
}

TEST(Fp8, EmulatedLinearIsTheSumOverQuantizedBlocks) {
  Tensor w = spread(200, 320, 5), x = spread(7, 320, 6), bias = at::randn({200});
  fp8::Weight q;
  fp8::quantize_weight(w, q);
  Tensor y = fp8::linear(x.view({7, 1, 320}), q, bias, at::kFloat);
  ASSERT_EQ(y.sizes(), (at::IntArrayRef{7, 1, 200}));
  auto [qa, sa] = fp8::quantize_activations_reference(x, 128);
  Tensor want = reference_product(qa, sa, q) + bias.to(at::kDouble);
  EXPECT_LT(max_rel(y.view({7, 200}), want), 1e-6);
  // And near the unquantized product: FP8 error, not a different function.
  const double err = max_rel(y.view({7, 200}), at::linear(x, w, bias));
  EXPECT_LT(err, 0.08);
  EXPECT_GT(err, 1e-4);
}

TEST(Fp8, EmulatedGroupedProductPerExpert) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  Tensor w = at::randn({3, 48, 32}, gen), x = at::randn({9, 32}, gen);
  Tensor counts = at::tensor({4, 0, 5}, at::kLong);
  fp8::Weight q;
  fp8::quantize_weight(w, q, /*rows=*/true);
  Tensor y = fp8::grouped(x, q, counts);
  auto [qa, sa] = fp8::quantize_activations_reference(x, 0);
  Tensor a = qa.to(at::kDouble) * sa.to(at::kDouble).unsqueeze(1);
  Tensor b = q.q.to(at::kDouble) * q.scale.to(at::kDouble).unsqueeze(-1);
  Tensor want = at::cat({at::matmul(a.narrow(0, 0, 4), b[0].t()), at::matmul(a.narrow(0, 4, 5), b[2].t())});
  EXPECT_LT(max_rel(y, want), 1e-6);
}

TEST(Fp8, LayersUseTheirCopiesOnlyInsideAScope) {
  // kTinyV3 with widths of 16: q_a_proj (32 -> 24) and q_b_proj stay in the model dtype, as do
  // kv_b_proj and the output projection.
  auto m = grpo::testing::tiny(grpo::testing::with_paged_mla_widths(grpo::testing::kTinyV3), 1);
  EXPECT_EQ(fp8::quantized_layers(*m), 0);
  const int64_t bytes = fp8::quantize_model(*m);
  EXPECT_GT(bytes, 0);
  auto layer = m->model->layers[1]->as<DecoderLayer>();
  auto attn = layer->self_attn->as<MLAImpl>();
  EXPECT_TRUE(attn->o_proj->fp8.defined());
  EXPECT_TRUE(attn->kv_a_proj_with_mqa->fp8.defined());
  EXPECT_FALSE(attn->q_a_proj->fp8.defined());
  EXPECT_FALSE(attn->kv_b_proj->fp8.defined());
  EXPECT_TRUE(layer->moe->experts->fp8_gate_up.defined());
  // o_proj, kv_a, the dense MLP's three in layer 0, the shared expert's three and the expert stack
  // in layers 1 and 2.
  EXPECT_EQ(fp8::quantized_layers(*m), 3 * 2 + 3 + 2 * (3 + 1));

  Tensor x = at::randn({3, 32});
  Tensor plain = attn->o_proj(x);
  EXPECT_TRUE(at::equal(plain, at::linear(x, attn->o_proj->weight)));
  {
    fp8::Scope on(true);
    Tensor low = attn->o_proj(x);
    EXPECT_TRUE(at::equal(low, fp8::linear(x, attn->o_proj->fp8, {}, at::kFloat)));
    EXPECT_FALSE(at::equal(low, plain));
    fp8::Scope off(false);
    EXPECT_TRUE(at::equal(attn->o_proj(x), plain));
  }
  EXPECT_FALSE(fp8::active());

  // The whole model: logits move by FP8 error only.
  std::vector<int64_t> ids{5, 9, 2, 60, 33, 7};
  Tensor input = at::tensor(ids, at::kLong).view({1, 6});
  at::NoGradGuard g;
  Tensor ref = m->logits(m->hidden_states(input));
  Tensor low;
  {
    fp8::Scope on(true);
    low = m->logits(m->hidden_states(input));
  }
  const double err = max_rel(low, ref);
  EXPECT_GT(err, 0);
  EXPECT_LT(err, 0.1);
}

TEST(Fp8, CopiesHoldTheAdaptersMerged) {
  // Under LoRA the rollout decodes with W + scaling B A: the copy is of the merged weight, and the
  // adapter's side path is not added again inside the scope.
  auto m = grpo::testing::tiny(grpo::testing::with_paged_mla_widths(grpo::testing::kTinyV3), 1);
  auto& o_proj = *m->model->layers[1]->as<DecoderLayer>()->self_attn->as<MLAImpl>()->o_proj;
  o_proj.add_lora(4, 2.0, 0.0, at::make_generator<at::CPUGeneratorImpl>(5));
  {
    at::NoGradGuard g;
    o_proj.lora_B->weight.normal_(0, 0.5);
  }
  fp8::quantize_model(*m);
  fp8::Weight merged, base;
  fp8::quantize_weight(o_proj.effective_weight(), merged);
  fp8::quantize_weight(o_proj.weight, base);
  EXPECT_TRUE(at::equal(o_proj.fp8.q.view(at::kByte), merged.q.view(at::kByte)));
  EXPECT_FALSE(at::equal(merged.q.view(at::kByte), base.q.view(at::kByte)));
  Tensor x = at::randn({3, 32});
  fp8::Scope on(true);
  EXPECT_TRUE(at::equal(o_proj.forward(x), fp8::linear(x, merged, {}, at::kFloat)));
}

TEST(Fp8Cuda, KernelQuantizerEqualsReferenceBitForBit) {
#ifndef GRPO_FP8_CUDA
  GTEST_SKIP() << "built without the CUDA kernels";
#else
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (auto dtype : {at::kBFloat16, at::kFloat})
    for (int64_t M : {1, 37, 300})
      for (int64_t K : {16, 128, 1008, 2048}) {
        Tensor x = spread(M, K, M * K).to(at::kCUDA, dtype);
        if (M > 2) x[2].zero_();
        for (int64_t group : {0, 128, -1}) {
          // -1: groups of 128, padded as the block-scaled product asks (rows to 4, columns to 512).
          const int64_t g = group < 0 ? 128 : group, cols = group < 0 ? (K + 511) / 512 * 512 : 0;
          const int64_t rows = group < 0 ? 4 : 1;
          auto [q, s] = model::cuda::fp8_quantize(x, g, cols, rows);
          auto [qr, sr] = fp8::quantize_activations_reference(x, g, cols, rows);
          EXPECT_TRUE(at::equal(q.view(at::kByte), qr.view(at::kByte))) << M << "x" << K << " group " << group;
          EXPECT_TRUE(at::equal(s, sr)) << M << "x" << K << " group " << group;
          if (g == 128) {  // Mp contiguous, as _scaled_mm reads them (a size-1 dimension's stride is free)
            EXPECT_TRUE(s.size(0) == 1 || s.stride(0) == 1);
            EXPECT_TRUE(s.size(1) == 1 || s.stride(1) == s.size(0));
          }
        }
      }
#endif
}

TEST(Fp8Cuda, KernelsAgreeWithTheEmulation) {
  if (!at::hasCUDA() || !fp8::native(at::Device(at::kCUDA, 0)))
    GTEST_SKIP() << "needs a Hopper GPU (runs on the GPU machine)";
  // Dense: 1 x 128 activations times 128 x 128 weight blocks, against the float64 sum.
  // K 1008 and 1408: 8 and 11 column blocks (the latter padded to 12 for cuBLAS); M 1 and 37 are
  // padded to a multiple of 4.
  for (int64_t K : {1008, 1408})
  for (int64_t M : {1, 37, 256}) {
    Tensor w = spread(384, K, 8), x = spread(M, K, 9 + M);
    fp8::Weight q;
    fp8::quantize_weight(w.to(at::kCUDA, at::kBFloat16), q);
    Tensor xb = x.to(at::kCUDA, at::kBFloat16);
    Tensor y = fp8::linear(xb, q, {}, at::kBFloat16);
    ASSERT_EQ(y.sizes(), (at::IntArrayRef{M, 384}));
    auto [qa, sa] = fp8::quantize_activations_reference(xb, 128);
    fp8::Weight host{q.q.cpu(), q.scale.cpu(), q.cols};
    const double err = max_rel(y, reference_product(qa.cpu(), sa.cpu(), host));
    std::cout << "M " << M << ", K " << K << ": max |_scaled_mm - float64| / max = " << err << "\n";
    EXPECT_LT(err, 8e-3);  // bf16 output rounding (2^-8) and fp32 sums
  }
  // Routed experts: per-row scales, uneven groups, an empty expert.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(10);
  Tensor w = at::randn({4, 256, 512}, gen), x = at::randn({50, 512}, gen);
  Tensor counts = at::tensor({20, 0, 7, 23}, at::kLong);
  fp8::Weight q;
  fp8::quantize_weight(w.to(at::kCUDA, at::kBFloat16), q, /*rows=*/true);
  Tensor xb = x.to(at::kCUDA, at::kBFloat16);
  Tensor y = fp8::grouped(xb, q, counts.to(at::kCUDA));
  fp8::Weight host{q.q.cpu(), q.scale.cpu(), q.cols};
  Tensor want = fp8::grouped(xb.cpu().to(at::kFloat), host, counts);
  const double err = max_rel(y, want);
  std::cout << "grouped: max |_scaled_grouped_mm - emulation| / max = " << err << "\n";
  EXPECT_LT(err, 8e-3);
}

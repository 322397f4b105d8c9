// The training kernels, "train_kernels" (model/train_kernels.h; adopted, model/kernel_trial.h),
// against the ATen chains they replaced ("-train_kernels"), layer by layer; and their whole bf16
// training step on CUDA against the fp32 step, as close as the ATen chains' step comes; the same
// for the experts' gathers ("gather_combine") and MLA's assembled inputs ("mla_assemble"), adopted
// too, whose kernels also meet their ATen forms.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/tensor_checks.h"
#include "common/tiny_models.h"
#include "model/kernel_trial.h"
#include "model/layers.h"
#include "model/moe.h"
#include "model/train_kernels.h"

namespace grpo::model {
namespace {

using at::Tensor;
using grpo::testing::max_rel;

const at::TensorOptions kCuda = at::TensorOptions().device(at::kCUDA);

// RMSNorm's output and its gradients (input, weight) with and without the kernels, fp32 and bf16,
// with a trained weight and a frozen one.
TEST(TrainKernelsCuda, RmsNormAgreesWithAten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (int64_t D : {96, 2048})
      for (bool weight_grad : {true, false}) {
        at::manual_seed(3);
        Tensor x0 = at::randn({3, 100, D}, kCuda.dtype(dtype)) * 3, dy = at::randn({3, 100, D}, kCuda.dtype(dtype));
        Tensor w0 = (at::rand({D}, kCuda) + 0.5).to(dtype);
        auto run = [&](const std::string& kernels) {
          KernelTrialScope scope(kernels);
          RMSNorm norm(D, 1e-6);
          norm->to(at::kCUDA, dtype);
          {
            at::NoGradGuard g;
            norm->weight.copy_(w0);
          }
          norm->weight.set_requires_grad(weight_grad);
          Tensor x = x0.clone().requires_grad_();
          Tensor y = norm(x);
          y.backward(dy);
          return std::vector<Tensor>{y.detach(), x.grad(), weight_grad ? norm->weight.grad() : Tensor()};
        };
        const auto aten = run("-train_kernels"), fused = run("");
        const double tol = dtype == at::kFloat ? 1e-5 : 2e-2;
        SCOPED_TRACE(std::string(dtype == at::kFloat ? "fp32" : "bf16") + " D " + std::to_string(D));
        // rstd from another sum order: x * rstd, then w times it, may each land one rounding apart.
        EXPECT_LT(max_rel(fused[0], aten[0]), dtype == at::kFloat ? 4e-6 : 1.6e-2);
        EXPECT_LT(max_rel(fused[1], aten[1]), tol);
        ASSERT_EQ(fused[2].defined(), weight_grad);
        if (weight_grad) {
          EXPECT_LT(max_rel(fused[2], aten[2]), tol);
        }
      }
}

// SwiGLU over the experts' [gate | up] rows, and in the dense MLP (gate and up apart): the forward
// is the same bits, the backward rounds where autograd's chain rounds.
TEST(TrainKernelsCuda, SwigluAgreesWithAten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (int64_t I : {40, 1408}) {
      at::manual_seed(4);
      Tensor gu0 = at::randn({300, 2 * I}, kCuda.dtype(dtype)) * 3, dh = at::randn({300, I}, kCuda.dtype(dtype));
      auto experts = [&](const std::string& kernels) {
        KernelTrialScope scope(kernels);
        RoutedExperts ex(2, 8, I);
        Tensor gu = gu0.clone().requires_grad_();
        Tensor h = ex->swiglu(gu);
        h.backward(dh);
        return std::vector<Tensor>{h.detach(), gu.grad()};
      };
      auto mlp = [&](const std::string& kernels) {  // gate and up apart: the dense MLP's form
        KernelTrialScope scope(kernels);
        MLP m(64, I);
        m->to(at::kCUDA, dtype);
        {
          at::NoGradGuard g;
          for (auto& p : m->parameters())
            p.copy_(at::randn(p.sizes(), at::make_generator<at::CPUGeneratorImpl>(7), at::kFloat).mul_(0.2));
        }
        Tensor x = at::randn({300, 64}, at::make_generator<at::CPUGeneratorImpl>(8), at::kFloat)
                       .to(at::kCUDA, dtype)
                       .requires_grad_();
        Tensor y = m(x);
        y.backward(at::ones_like(y));
        return std::vector<Tensor>{y.detach(), x.grad(), m->gate_proj->weight.grad(), m->up_proj->weight.grad()};
      };
      SCOPED_TRACE(std::string(dtype == at::kFloat ? "fp32" : "bf16") + " I " + std::to_string(I));
      const auto a = experts("-train_kernels"), f = experts("");
      EXPECT_TRUE(at::equal(f[0], a[0]));
      EXPECT_LT(max_rel(f[1], a[1]), dtype == at::kFloat ? 1e-5 : 1e-2);
      const auto ma = mlp("-train_kernels"), mf = mlp("");
      EXPECT_TRUE(at::equal(mf[0], ma[0]));
      for (size_t i = 1; i < ma.size(); ++i) EXPECT_LT(max_rel(mf[i], ma[i]), dtype == at::kFloat ? 1e-5 : 2e-2) << i;
    }
}

// SwiGLU forward and backward in 16-byte packs, a warp per row (rows 16-byte aligned), against the
// same kernels an element at a time (the same rows copied one value off alignment, and the aligned
// rows with "-packed_swiglu"): the same bits,
// at widths that are and are not a whole number of packs and row counts that leave a block part
// empty; the forward also the bits of ATen's silu(gate) * up.
TEST(TrainKernelsCuda, SwigluInPacksGivesTheBitsOfOneElementAThread) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (int64_t I : {8, 1408, 1412})
      for (int64_t M : {1, 9, 300}) {
        SCOPED_TRACE(std::string(dtype == at::kFloat ? "fp32" : "bf16") + " I " + std::to_string(I) + " M " +
                     std::to_string(M));
        at::manual_seed(I + M);
        const Tensor gu = at::randn({M, 2 * I}, kCuda.dtype(dtype)) * 3, dh = at::randn({M, I}, kCuda.dtype(dtype));
        const Tensor shifted = at::empty({M * 2 * I + 1}, gu.options()).narrow(0, 1, M * 2 * I).view({M, 2 * I});
        shifted.copy_(gu);
        ASSERT_NE(reinterpret_cast<uintptr_t>(shifted.data_ptr()) % 16, 0u);
        auto run = [&](const Tensor& rows) {
          Tensor leaf = rows.detach().requires_grad_();
          Tensor h = train::swiglu(leaf);
          EXPECT_TRUE(h.defined());
          h.backward(dh);
          return std::vector<Tensor>{h.detach(), leaf.grad()};
        };
        const auto packed = run(gu), single = run(shifted);
        EXPECT_TRUE(at::equal(packed[0], single[0]));
        EXPECT_TRUE(at::equal(packed[1], single[1]));
        KernelTrialScope off("-packed_swiglu");  // the aligned rows an element a thread
        const auto unpacked = run(gu);
        EXPECT_TRUE(at::equal(packed[0], unpacked[0]));
        EXPECT_TRUE(at::equal(packed[1], unpacked[1]));
        EXPECT_TRUE(at::equal(packed[0], at::silu(gu.narrow(1, 0, I)) * gu.narrow(1, I, I)));
      }
}

// The experts' gathers ("gather_combine") as kernels against their ATen form on the same
// device: the weighted combine and the dispatch's backward sum a token's k rows in fp32 and round
// once (ATen may add them in another order: a rounding apart at most), the combine's row gradients
// are the same bits (one product, one rounding), its weight gradients fp32 dot products.
TEST(TrainKernelsCuda, ExpertGathersAgreeWithAten) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (int64_t H : {37, 2048})  // 37: no 16-byte packs
      for (int64_t k : {1, 6}) {
        SCOPED_TRACE(std::string(dtype == at::kFloat ? "fp32" : "bf16") + " H " + std::to_string(H) + " k " +
                     std::to_string(k));
        at::manual_seed(11);
        const int64_t N = 300, R = N * k;
        const Tensor rows = at::randn({R, H}, kCuda.dtype(dtype)), g = at::randn({N, H}, kCuda.dtype(dtype));
        const Tensor slot = at::randperm(R, kCuda.dtype(at::kLong)), w = at::rand({R}, kCuda);
        const Tensor paired = rows.index_select(0, slot);  // pair order
        const double sum_tol = dtype == at::kFloat ? 2e-6 : 8e-3;
        const Tensor out = train::gather_sum(rows, slot, w, k);
        ASSERT_TRUE(out.defined());
        const Tensor want = (paired * w.unsqueeze(1)).to(dtype).view({N, k, H}).sum(1);
        EXPECT_LT(max_rel(out, want), sum_tol);
        if (dtype == at::kBFloat16)  // fp32 sums in another order differ in their last bits; rounded to bf16, seldom
          EXPECT_GT(out.eq(want).to(at::kFloat).mean().item<double>(), 0.99);
        const Tensor plain = train::gather_sum(rows, slot, Tensor(), k);
        EXPECT_LT(max_rel(plain, paired.view({N, k, H}).sum(1)), sum_tol);
        auto [drows, dw] = train::combine_backward(g, rows, slot, w, k);
        ASSERT_TRUE(drows.defined() && dw.defined());
        const Tensor gp = g.unsqueeze(1).expand({N, k, H}).reshape({R, H}).to(at::kFloat);
        EXPECT_TRUE(at::equal(drows, at::empty_like(rows).index_copy_(0, slot, (gp * w.unsqueeze(1)).to(dtype))));
        EXPECT_LT(max_rel(dw, (gp * paired.to(at::kFloat)).sum(1)), 1e-5);
      }
}

// MLA's attention inputs ("mla_assemble") against MLAImpl's ATen chain on the same tensors:
// query, key and value the same bits, and the gradients of the query projection and of the key/value
// up-projection too (the chain's roundings, gradients given in a strided layout); the keys' shared
// RoPE part sums its heads' gradients in another order: a rounding apart at most.
TEST(TrainKernelsCuda, MlaInputsEqualTheChain) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  const int64_t B = 2, T = 33, nh = 4, dn = 32, dr = 16, dv = 24, r = 16;
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (bool interleave : {true, false}) {
      SCOPED_TRACE(std::string(dtype == at::kFloat ? "fp32" : "bf16") + (interleave ? " interleaved" : " halves"));
      at::manual_seed(12);
      auto o = kCuda.dtype(dtype);
      const Tensor q0 = at::randn({B, T, nh, dn + dr}, o), kv0 = at::randn({B, T, nh, dn + dv}, o);
      const Tensor comp0 = at::randn({B, T, r + dr}, o);
      const RopeTables tables{at::randn({B, T, 1, dr / 2}, o), at::randn({B, T, 1, dr / 2}, o)};
      const Tensor gq = at::randn({B, nh, T, dn + dr}, o).transpose(1, 2), gk = at::randn({B, T, nh, dn + dr}, o);
      const Tensor gv = at::randn({B, nh, T, dv}, o).transpose(1, 2);
      auto leaves = [&] {
        return std::vector<Tensor>{q0.clone().requires_grad_(), kv0.clone().requires_grad_(),
                                   comp0.clone().requires_grad_()};
      };
      const auto chain = leaves(), fused = leaves();
      const Tensor &q = chain[0], &kv = chain[1], &comp = chain[2];
      const Tensor query = at::cat({q.narrow(-1, 0, dn), apply_rope(q.narrow(-1, dn, dr), tables, interleave)}, -1);
      const Tensor k_pe = apply_rope(comp.narrow(-1, r, dr).view({B, T, 1, dr}), tables, interleave);
      const Tensor key = at::cat({kv.narrow(-1, 0, dn), k_pe.expand({B, T, nh, dr})}, -1);
      const Tensor value = kv.narrow(-1, dn, dv);
      torch::autograd::backward({query, key, value}, {gq, gk, gv});
      const auto out = train::mla_inputs(fused[0], fused[1], fused[2].narrow(-1, r, dr), tables.cos, tables.sin,
                                         interleave, dn);
      ASSERT_EQ(out.size(), 3u);
      EXPECT_TRUE(at::equal(out[0], query));
      EXPECT_TRUE(at::equal(out[1], key));
      EXPECT_TRUE(at::equal(out[2], value));
      EXPECT_TRUE(out[0].is_contiguous() && out[1].is_contiguous() && out[2].is_contiguous());
      torch::autograd::backward({out[0], out[1], out[2]}, {gq, gk, gv});
      EXPECT_TRUE(at::equal(fused[0].grad(), q.grad()));
      EXPECT_TRUE(at::equal(fused[1].grad(), kv.grad()));
      EXPECT_LT(max_rel(fused[2].grad(), comp.grad()), dtype == at::kFloat ? 2e-6 : 8e-3);
      EXPECT_GT(fused[2].grad().narrow(-1, r, dr).abs().max().item<double>(), 0);
      EXPECT_EQ(fused[2].grad().narrow(-1, 0, r).abs().max().item<double>(), 0);
    }
}

// A bf16 training step on CUDA under GRPO_KERNEL_TRIAL=`with` lands as close to the fp32 step's loss
// and gradients as the step under `without` does: the tiny DeepSeek-V3-style model with MLA's unequal
// query and value widths (48 and 32 here; 192 and 128 in DeepSeek-V2-Lite), with and without
// gradient checkpointing (whose recomputation must repeat the first pass).
void expect_step(const std::string& with, const std::string& without, bool checkpointing) {
  const std::string config = testing::replace_in_config(
      testing::kTinyV3, "\"qk_nope_head_dim\": 8, \"qk_rope_head_dim\": 4, \"v_head_dim\": 8",
      "\"qk_nope_head_dim\": 32, \"qk_rope_head_dim\": 16, \"v_head_dim\": 32");
  // Equal lengths: no padding, so the attention is plain causal.
  std::vector<std::vector<int64_t>> prompts, completions;
  for (int64_t b = 0; b < 3; ++b) {
    prompts.emplace_back();
    completions.emplace_back();
    for (int64_t t = 0; t < 24; ++t) prompts.back().push_back((7 * b + 5 * t + 1) % 97);
    for (int64_t t = 0; t < 40; ++t) completions.back().push_back((11 * b + 3 * t + 2) % 97);
  }
  auto step = [&](at::ScalarType dtype, const std::string& kernels) {
    KernelTrialScope scope(kernels);
    auto m = testing::tiny(config, 4);
    m->gradient_checkpointing = checkpointing;
    m->to_device_dtype(at::kCUDA, dtype);
    Tensor loss = -at::cat(m->completion_logprobs(prompts, completions)).sum();
    loss.backward();
    std::vector<std::pair<std::string, Tensor>> out = {{"loss", loss.detach().to(at::kFloat).reshape({1})}};
    for (auto& kv : m->named_parameters())
      if (kv.value().grad().defined()) out.emplace_back(kv.key(), kv.value().grad().to(at::kFloat));
    return out;
  };
  const auto ref = step(at::kFloat, ""), plain = step(at::kBFloat16, without), tried = step(at::kBFloat16, with);
  ASSERT_EQ(ref.size(), tried.size());
  ASSERT_EQ(ref.size(), plain.size());
  int compared = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_EQ(ref[i].first, tried[i].first);
    if (ref[i].second.abs().max().item<double>() == 0) continue;
    const double e_plain = max_rel(plain[i].second, ref[i].second), e_tried = max_rel(tried[i].second, ref[i].second);
    EXPECT_LE(e_tried, std::max(2 * e_plain, 3e-2)) << ref[i].first << ": under '" << without << "' " << e_plain;
    ++compared;
  }
  EXPECT_GT(compared, 30);
}

TEST(TrainKernelsCuda, TrainKernelsGiveTheGradients) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  expect_step("", "-train_kernels", false);
  expect_step("", "-train_kernels", true);
}

TEST(TrainKernelsCuda, MlaAssembleGivesTheGradients) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  expect_step("", "-mla_assemble", false);
  expect_step("", "-mla_assemble", true);
}

TEST(TrainKernelsCuda, GatherCombineGivesTheGradients) {
  if (!at::hasCUDA()) GTEST_SKIP() << "needs a CUDA device (runs on the GPU machine)";
  expect_step("", "-gather_combine", false);
  expect_step("", "-gather_combine", true);
}

}  // namespace
}  // namespace grpo::model

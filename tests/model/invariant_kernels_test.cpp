// The batch-invariant CPU kernels against scalar references written from their documented order
// (eight interleaved fp32 partial sums, a fixed tree, then the tail; keys in order): bit for bit,
// whatever instruction set the machine's clone uses, for fp32 and bf16 weights, row counts that do
// and do not fill blocks of four, and a K with a tail. A kernel that reassociated, contracted a
// product into an addition or changed the tree would differ in the last bits.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "model/invariant_kernels.h"
#include "model/kernel_trial.h"
#ifdef GRPO_PAGED_MLA_CUDA
#include "model/invariant_kernels_cuda.h"
#endif

using namespace grpo::model;
using at::Tensor;

namespace {

float reference_dot(const float* a, const float* b, int64_t K) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)
    for (int u = 0; u < 8; ++u) {
      const float p = a[k + u] * b[k + u];  // rounded before the addition: no contraction
      acc[u] = acc[u] + p;
    }
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; k < K; ++k) {
    const float p = a[k] * b[k];
    s = s + p;
  }
  return s;
}

// out[m, n] = reference_dot(x[m], w[group[m], n]) over fp32 copies (bf16 widens exactly).
Tensor reference_products(const Tensor& x, const Tensor& w, const std::vector<int64_t>& group) {
  const Tensor xf = x.to(at::kFloat).contiguous(), wf = w.to(at::kFloat).contiguous();
  const int64_t M = xf.size(0), K = xf.size(1), N = wf.size(-2);
  Tensor out = at::empty({M, N});
  const float *xp = xf.data_ptr<float>(), *wp = wf.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) op[m * N + n] = reference_dot(xp + m * K, wp + (group[m] * N + n) * K, K);
  return out;
}

}  // namespace

// The switch for kernels on trial and adopted ones: a name counts only as a whole item of
// GRPO_KERNEL_TRIAL's comma-separated list, an adopted kernel is off only as "-name".
TEST(KernelTrial, NamesAreWholeItemsOfTheList) {
  ::unsetenv("GRPO_KERNEL_TRIAL");
  EXPECT_FALSE(kernel_on_trial("wide_products"));
  EXPECT_TRUE(kernel_adopted("staged_tiles"));
  {
    KernelTrialScope outer("router,wide_products,,tall_tiles,-staged_tiles");
    EXPECT_TRUE(kernel_on_trial("router"));
    EXPECT_TRUE(kernel_on_trial("wide_products"));
    EXPECT_TRUE(kernel_on_trial("tall_tiles"));
    EXPECT_FALSE(kernel_on_trial("wide"));
    EXPECT_FALSE(kernel_on_trial("products"));
    EXPECT_FALSE(kernel_on_trial("query_tiles"));
    EXPECT_FALSE(kernel_on_trial("staged_tiles"));
    EXPECT_FALSE(kernel_adopted("staged_tiles"));
    EXPECT_TRUE(kernel_adopted("router")) << "named without '-'";
    EXPECT_TRUE(kernel_adopted("staged"));
    EXPECT_TRUE(kernel_adopted("tiles"));
    {
      KernelTrialScope inner("query_tiles");
      EXPECT_TRUE(kernel_on_trial("query_tiles"));
      EXPECT_FALSE(kernel_on_trial("router"));
    }
    EXPECT_TRUE(kernel_on_trial("router")) << "the outer list is back";
  }
  EXPECT_EQ(std::getenv("GRPO_KERNEL_TRIAL"), nullptr);
}

// checked_keys says when the queries come in runs of one sequence's tokens (a prefill, a training
// forward over whole sequences: two or more rows a run on average), which the attention may serve
// several at a time, and not for a decode step's rows, one per sequence.
TEST(InvariantKernels, CheckedKeysFindRunsOfOneSequence) {
  invariant::KeyLayout prefill;
  prefill.table = at::arange(12, at::TensorOptions().dtype(at::kLong));
  prefill.table_start = at::tensor(std::vector<int64_t>{0, 0, 0, 0, 0, 4, 4, 4, 8});
  prefill.num_keys = at::tensor(std::vector<int64_t>{1, 2, 3, 4, 5, 1, 2, 3, 1});
  prefill.block_size = 2;
  const invariant::KeyLayout runs = invariant::checked_keys(prefill, 24, at::kCPU);
  EXPECT_TRUE(runs.query_runs);
  EXPECT_EQ(runs.max_keys, 5);
  invariant::KeyLayout decode = prefill;
  decode.table_start = at::tensor(std::vector<int64_t>{0, 4, 8});
  decode.num_keys = at::tensor(std::vector<int64_t>{7, 3, 2});
  EXPECT_FALSE(invariant::checked_keys(decode, 24, at::kCPU).query_runs);
}

TEST(InvariantKernels, MatmulEqualsTheDocumentedOrderBitForBit) {
  at::manual_seed(1);
  for (auto dtype : {at::kFloat, at::kBFloat16})
    for (int64_t M : {1, 3, 4, 9, 64}) {
      const int64_t K = 203, N = 37;  // K: 25 steps of eight and a tail of three
      Tensor x = at::randn({M, K}).to(dtype), w = at::randn({N, K}).to(dtype);
      Tensor got = invariant::matmul_nt(x, w);
      Tensor want = reference_products(x, w, std::vector<int64_t>(M, 0));
      EXPECT_TRUE(at::equal(got, want)) << "dtype " << dtype << ", rows " << M << ": max |diff| "
                                        << (got - want).abs().max().item<float>();
      // And a row alone gives what it gives among the others.
      EXPECT_TRUE(at::equal(invariant::matmul_nt(x.narrow(0, M - 1, 1), w), got.narrow(0, M - 1, 1)));
    }
}

TEST(InvariantKernels, GroupedMatmulEqualsTheDocumentedOrderBitForBit) {
  at::manual_seed(2);
  // Runs of one group long enough for blocks of four, and short ones that are not.
  const std::vector<int64_t> group = {0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4};
  const int64_t M = (int64_t)group.size(), K = 77, N = 19, G = 5;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    Tensor x = at::randn({M, K}).to(dtype), w = at::randn({G, N, K}).to(dtype);
    invariant::RowGroups rg;
    rg.group = at::tensor(group);
    Tensor got = invariant::grouped_matmul_nt(x, w, rg);
    Tensor want = reference_products(x, w, group);
    EXPECT_TRUE(at::equal(got, want)) << "dtype " << dtype << ": max |diff| " << (got - want).abs().max().item<float>();
  }
}

// Products large enough to be cut into several weight chunks and row panels and shared among
// threads: still each output in the documented order. Runs of one group that end inside a block of
// four, a K whose rows do not fill a step, fp32, bf16 and fp16 weights.
TEST(InvariantKernels, LargeProductsEqualTheDocumentedOrderBitForBit) {
  at::manual_seed(4);
  const int64_t M = 150, K = 1003, N = 141, G = 3;
  std::vector<int64_t> group(M);
  for (int64_t m = 0; m < M; ++m) group[m] = m < 67 ? 0 : m < 69 ? 1 : 2;
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    Tensor x = at::randn({M, K}).to(at::kBFloat16), w = at::randn({G, N, K}).to(dtype);
    Tensor plain = invariant::matmul_nt(x, w[2]);
    Tensor want_plain = reference_products(x, w[2], std::vector<int64_t>(M, 0));
    EXPECT_TRUE(at::equal(plain, want_plain)) << "dtype " << dtype << ": max |diff| "
                                              << (plain - want_plain).abs().max().item<float>();
    invariant::RowGroups rg;
    rg.group = at::tensor(group);
    Tensor grouped = invariant::grouped_matmul_nt(x, w, rg);
    Tensor want = reference_products(x, w, group);
    EXPECT_TRUE(at::equal(grouped, want)) << "dtype " << dtype << ": max |diff| " << (grouped - want).abs().max().item<float>();
  }
}

// Heads sharing a kv head in fours (8 of 2 and 8 of 1), in twos (4 of 2) and alone (3 of 1);
// keys in fours and a remainder; a key width with a tail.
TEST(InvariantKernels, AttentionEqualsTheDocumentedOrderBitForBit) {
  at::manual_seed(3);
  const int64_t dk = 21, dv = 13, bs = 4, blocks = 12;
  for (auto [heads, kv_heads] : std::vector<std::pair<int64_t, int64_t>>{{4, 2}, {8, 2}, {8, 1}, {3, 1}})
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      const int64_t width = kv_heads * (dk + dv);  // [k (kv_heads x dk) | v (kv_heads x dv)]
      Tensor cache = at::randn({blocks * bs, width}).to(dtype);
      // Two queries: 7 keys from blocks 5, 2; 13 keys from blocks 9, 0, 11, 3.
      invariant::KeyLayout keys{at::tensor(std::vector<int64_t>{5, 2, 9, 0, 11, 3}), at::tensor(std::vector<int64_t>{0, 2}),
                                at::tensor(std::vector<int64_t>{7, 13}), bs};
      invariant::HeadLayout hl{kv_heads, 0, dk, dk, kv_heads * dk, dv, dv};
      Tensor q = at::randn({2, heads, dk});
      const double scale = 0.3;
      Tensor got = invariant::attention(q, cache, keys, hl, scale);
      const Tensor cf = cache.to(at::kFloat).contiguous();
      const std::vector<std::vector<int64_t>> tables = {{5, 2}, {9, 0, 11, 3}};
      const std::vector<int64_t> counts = {7, 13};
      for (int64_t n = 0; n < 2; ++n)
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t g = h / (heads / kv_heads), L = counts[n];
          std::vector<float> p(L);
          float m = -std::numeric_limits<float>::infinity();
          auto row = [&](int64_t j) { return cf[tables[n][j / bs] * bs + j % bs].data_ptr<float>(); };
          for (int64_t j = 0; j < L; ++j) {
            p[j] = reference_dot(q[n][h].contiguous().data_ptr<float>(), row(j) + g * dk, dk) * (float)scale;
            m = p[j] > m ? p[j] : m;
          }
          float l = 0;
          for (int64_t j = 0; j < L; ++j) l += (p[j] = std::exp(p[j] - m));
          for (int64_t d = 0; d < dv; ++d) {
            float acc = 0;
            for (int64_t j = 0; j < L; ++j) {
              const float t = p[j] * row(j)[kv_heads * dk + g * dv + d];
              acc = acc + t;
            }
            EXPECT_EQ(got[n][h][d].item<float>(), acc / l)
                << heads << " heads of " << kv_heads << ", dtype " << dtype << ", query " << n << ", head " << h;
          }
        }
    }
}

// On CUDA (invariant_kernels_cuda.cu): a row's product is the same bits alone, among 37 or 300
// rows, and in a grouped call among other groups' rows; the bf16-rounded form is the fp32 result
// rounded; the products are close to fp64 (the parts of K are all added). K = 2048 and 1408 (the
// V2-Lite shapes), 40 (parts shorter than one step), 33 (odd: the unaligned loads).
TEST(InvariantKernelsCuda, ProductsDependOnTheRowAlone) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  at::manual_seed(3);
  for (int64_t K : {2048, 1408, 40, 33})
    for (auto dtype : {at::kBFloat16, at::kFloat}) {
      const int64_t N = 100, M = 300, G = 5;
      Tensor x = at::randn({M, K}).to(cuda, dtype), w = at::randn({G, N, K}).to(cuda, dtype);
      Tensor all = invariant::matmul_nt(x, w[1]);
      for (int64_t m : {0, 17, 299}) {
        EXPECT_TRUE(at::equal(invariant::matmul_nt(x.narrow(0, m, 1), w[1]), all.narrow(0, m, 1))) << K << " row " << m;
        const int64_t from = std::min<int64_t>(m, M - 37);  // 37 rows holding row m
        EXPECT_TRUE(at::equal(invariant::matmul_nt(x.narrow(0, from, 37), w[1]).narrow(0, m - from, 1), all.narrow(0, m, 1)));
      }
      Tensor exact = at::matmul(x.to(at::kDouble), w[1].to(at::kDouble).t());
      EXPECT_LT((all.to(at::kDouble) - exact).abs().max().item<double>(), 1e-3 * std::sqrt((double)K)) << K;
      if (dtype == at::kBFloat16) {
        EXPECT_TRUE(at::equal(invariant::matmul_nt(x, w[1], at::kBFloat16), all.to(at::kBFloat16))) << K;
      }
      // Grouped: rows of random groups, each as the plain product with its group's weight.
      Tensor group_of_row = at::randint(G, {M}, at::TensorOptions().dtype(at::kLong).device(cuda));
      invariant::RowGroups g = invariant::group_rows(group_of_row, G);
      Tensor grouped = invariant::grouped_matmul_nt(x.index_select(0, g.order), w, g);
      Tensor host_order = g.order.cpu(), host_group = g.group.cpu(), host_of_row = group_of_row.cpu();
      for (int64_t i = 1; i < M; ++i) {  // stable: rows of one group in row order
        ASSERT_EQ(host_group[i].item<int64_t>(), host_of_row[host_order[i].item<int64_t>()].item<int64_t>());
        if (host_group[i].item<int64_t>() == host_group[i - 1].item<int64_t>())
          ASSERT_LT(host_order[i - 1].item<int64_t>(), host_order[i].item<int64_t>());
        else
          ASSERT_LT(host_group[i - 1].item<int64_t>(), host_group[i].item<int64_t>());
      }
      for (int64_t i : {0, 150, 299}) {
        const int64_t row = host_order[i].item<int64_t>(), e = host_group[i].item<int64_t>();
        EXPECT_TRUE(at::equal(grouped.narrow(0, i, 1), invariant::matmul_nt(x.narrow(0, row, 1), w[e])))
            << K << " grouped row " << i;
      }
    }
}

// The wide products (invariant_gemm_cuda.h: 1,024 rows or more, 64 a group on average) against
// the decode kernel, bit for bit: plain products of 1,300 rows, fp32 and rounded to bf16, with K of
// the V2-Lite shapes, a K whose last part ends inside a 32-value step (1000), and one shorter than
// a part (24: seven empty parts); N = 300, not a multiple of the 128-column tile. The decode
// kernel's bits come from the same rows in calls of fewer than 1,024. Then grouped products
// through the 128-row tile tables, with a group of no rows, one of one row and one of 129 (a full
// tile and one row), and the per-head runs of MLA's absorbed products, against each group's rows
// through the decode kernel. A row alone (the decode kernel) equals its row of the wide product.
TEST(InvariantKernelsCuda, WideProductsEqualTheDecodeKernelBitForBit) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
#ifdef GRPO_PAGED_MLA_CUDA
  const at::Device cuda(at::kCUDA, 0);
  const auto bf16 = at::TensorOptions().device(cuda).dtype(at::kBFloat16);
  at::manual_seed(5);
  // x times w, through the decode kernel: the rows in calls of fewer than 1,024.
  auto narrow_calls = [](const Tensor& x, const Tensor& w, std::optional<at::ScalarType> round_to) {
    std::vector<Tensor> parts;
    for (int64_t m = 0; m < x.size(0); m += 600) {
      const Tensor rows = x.narrow(0, m, std::min<int64_t>(600, x.size(0) - m));
      EXPECT_FALSE(invariant::cuda::use_wide_products(rows.size(0), 1));
      parts.push_back(invariant::matmul_nt(rows, w, round_to));
    }
    return at::cat(parts);
  };
  for (int64_t K : {2048, 1408, 1000, 24}) {
    SCOPED_TRACE("K " + std::to_string(K));
    const int64_t M = 1300, N = 300, G = 6;
    Tensor x = at::randn({M, K}, bf16), w = at::randn({G, N, K}, bf16);
    ASSERT_TRUE(invariant::cuda::use_wide_products(M, 1));
    const Tensor wide = invariant::matmul_nt(x, w[2]), wide16 = invariant::matmul_nt(x, w[2], at::kBFloat16);
    for (int64_t m : {(int64_t)0, (int64_t)127, (int64_t)128, M - 1})
      EXPECT_TRUE(at::equal(invariant::matmul_nt(x.narrow(0, m, 1), w[2]), wide.narrow(0, m, 1))) << "row " << m;
    EXPECT_TRUE(at::equal(wide, narrow_calls(x, w[2], std::nullopt)));
    EXPECT_TRUE(at::equal(wide16, narrow_calls(x, w[2], at::kBFloat16)));

    // Rows of groups 1 (one row), 2 (129 rows) and 3-5 (the rest); group 0 has none.
    std::vector<int64_t> ids(M);
    for (int64_t m = 0; m < M; ++m) ids[m] = m == 7 ? 1 : m % 8 == 0 && m < 8 * 129 ? 2 : 3 + m % 3;
    const Tensor group_of_row = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).to(cuda);
    const invariant::RowGroups g = invariant::group_rows(group_of_row, G);
    ASSERT_TRUE(g.wide_tiles.defined());
    const Tensor xs = x.index_select(0, g.order);
    const Tensor got = invariant::grouped_matmul_nt(xs, w, g, at::kBFloat16);
    const Tensor grouped_ids = g.group.cpu();
    int64_t first = 0;
    for (int64_t e = 0; e < G; ++e) {  // the grouped order holds each group's rows together, in group order
      const int64_t n = grouped_ids.eq(e).sum().item<int64_t>();
      if (n > 0) {
        EXPECT_TRUE(at::equal(got.narrow(0, first, n), narrow_calls(xs.narrow(0, first, n), w[e], at::kBFloat16)))
            << "grouped, group " << e;
      }
      first += n;
    }
    const invariant::RowGroups heads = invariant::contiguous_groups(G, 200, cuda);
    ASSERT_TRUE(heads.wide_tiles.defined());
    const Tensor xh = x.narrow(0, 0, 200 * G), per_head = invariant::grouped_matmul_nt(xh, w, heads);
    for (int64_t e = 0; e < G; ++e)
      EXPECT_TRUE(at::equal(per_head.narrow(0, 200 * e, 200), narrow_calls(xh.narrow(0, 200 * e, 200), w[e], std::nullopt)))
          << "runs of 200 rows, head " << e;
  }
#else
  GTEST_SKIP() << "built without the CUDA kernels";
#endif
}

// Narrow tiles ("narrow_columns", adopted; GRPO_KERNEL_TRIAL=-narrow_columns turns them off): a
// decode step's products of one or a few rows in blocks of 8 columns, their loads eight chunks
// deep, give the bits of the 32-column blocks: plain products of 1, 5 and 16 rows with K of the V2-Lite shapes (2048, 1408), one whose
// last part ends inside a 32-value step (1000), one shorter than a part (24) and MLA's per-head
// widths (128, 512); N not a multiple of 8 (300) and V2-Lite's 2048; fp32 and bf16 outputs. Then
// grouped products through a tile table: six experts' single rows, and 16 heads' single rows.
TEST(InvariantKernelsCuda, NarrowColumnsGiveTheBitsOfWideOnes) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  const auto bf16 = at::TensorOptions().device(cuda).dtype(at::kBFloat16);
  at::manual_seed(11);
  auto under = [](const char* kernels, auto&& f) {
    KernelTrialScope scope(kernels);
    return f();
  };
  for (int64_t K : {2048, 1408, 1000, 24, 128, 512})
    for (int64_t N : {300, 2048})
      for (int64_t M : {1, 5, 16}) {
        SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(N) + " K " + std::to_string(K));
        const Tensor x = at::randn({M, K}, bf16), w = at::randn({N, K}, bf16);
        for (auto round_to : {std::optional<at::ScalarType>(), std::optional<at::ScalarType>(at::kBFloat16)}) {
          const Tensor want = under("-narrow_columns", [&] { return invariant::matmul_nt(x, w, round_to); });
          EXPECT_TRUE(at::equal(under("", [&] { return invariant::matmul_nt(x, w, round_to); }), want));
        }
      }
  // Six experts' rows of one token (64 experts; 96 columns, so that the tiles' blocks stay few
  // enough for narrow tiles), and sixteen heads' rows of one token.
  const Tensor x = at::randn({6, 2048}, bf16), w = at::randn({64, 96, 2048}, bf16);
  const invariant::RowGroups experts = invariant::group_rows(at::tensor({3, 17, 18, 40, 41, 63}, bf16.dtype(at::kLong)), 64);
  const Tensor xs = x.index_select(0, experts.order);
  const Tensor want = under("-narrow_columns", [&] { return invariant::grouped_matmul_nt(xs, w, experts, at::kBFloat16); });
  EXPECT_TRUE(at::equal(under("", [&] { return invariant::grouped_matmul_nt(xs, w, experts, at::kBFloat16); }),
                        want))
      << "experts";
  const Tensor xh = at::randn({16, 128}, bf16), wh = at::randn({16, 512, 128}, bf16);
  const invariant::RowGroups heads = invariant::contiguous_groups(16, 1, cuda);
  const Tensor want_h = under("-narrow_columns", [&] { return invariant::grouped_matmul_nt(xh, wh, heads); });
  EXPECT_TRUE(at::equal(under("", [&] { return invariant::grouped_matmul_nt(xh, wh, heads); }), want_h))
      << "heads";
}

// The fp32 products spread over the device (adopted: "fp32_products") give the bits of the warp
// form (GRPO_KERNEL_TRIAL=-fp32_products): LoRA's side paths (K the rank: 16, 8, 1 and the form's limit 32;
// then its A, N the rank, K 2048), the router (N 64), a K just past a warp's width (33) and one
// not a multiple of 32 (1000); 1, 5 and 200 rows; x bf16 (read as it is) and fp32. Then through a tile table: 300 rows over 64 groups, as LoRA's expert side paths.
TEST(InvariantKernelsCuda, SpreadFp32ProductsGiveTheBitsOfTheWarpForm) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const auto f32 = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  at::manual_seed(12);
  auto under = [](const char* kernels, auto&& f) {
    KernelTrialScope scope(kernels);
    return f();
  };
  struct Shape {
    int64_t n, k;
  };
  for (const Shape& sh : {Shape{2048, 16}, Shape{300, 8}, Shape{300, 1}, Shape{2048, 32}, Shape{16, 2048},
                          Shape{64, 2048}, Shape{300, 33}, Shape{300, 1000}})
    for (int64_t M : {1, 5, 200})
      for (auto x_type : {at::kBFloat16, at::kFloat}) {
        SCOPED_TRACE("M " + std::to_string(M) + " N " + std::to_string(sh.n) + " K " + std::to_string(sh.k) + " x " +
                     c10::toString(x_type));
        // Values of both signs and mixed sizes, so that the sum's order shows in its last bits.
        const Tensor x = (at::randn({M, sh.k}, f32) * at::exp(at::randn({M, sh.k}, f32))).to(x_type);
        const Tensor w = at::randn({sh.n, sh.k}, f32);
        const Tensor want = under("-fp32_products", [&] { return invariant::matmul_nt(x, w); });
        const Tensor got = under("", [&] { return invariant::matmul_nt(x, w); });
        ASSERT_EQ(got.scalar_type(), at::kFloat);
        EXPECT_TRUE(at::equal(got, want));
        EXPECT_LT((got - at::matmul(x.to(at::kFloat), w.t())).abs().max().item<double>(),
                  1e-4 * (1 + want.abs().max().item<double>()));
      }
  for (int64_t K : {16, 2048}) {
    const int64_t N = K == 16 ? 1408 : 16;
    const Tensor x = at::randn({300, K}, f32.dtype(at::kBFloat16)), w = at::randn({64, N, K}, f32);
    const invariant::RowGroups g = invariant::group_rows(at::randint(64, {300}, f32.dtype(at::kLong)), 64);
    const Tensor xs = x.index_select(0, g.order);
    const Tensor want = under("-fp32_products", [&] { return invariant::grouped_matmul_nt(xs, w, g); });
    EXPECT_TRUE(at::equal(under("", [&] { return invariant::grouped_matmul_nt(xs, w, g); }), want))
        << "grouped, K " << K;
  }
}

// Tall tiles (on trial: GRPO_KERNEL_TRIAL=tall_tiles,-staged_tiles): grouped products whose tiles hold 32 or 64
// rows of a group, so that a decode step reads each expert's (or head's) weights once per 32 or 64
// of its rows instead of once per 16, give the bits of the 16-row tiles: 400 rows over 16 groups
// (32-row tiles), 900 over 6 (64-row tiles), 100 over 16 (16-row tiles still), and 8 runs of 120
// rows (MLA's per-head products at batch 120), all below the wide products' 1,024 rows. So do the
// same tiles staged through shared memory by the wide kernel ("staged_tiles", adopted), 16-row
// tiles included. The 16-row tiles through the decode kernel ("-staged_tiles") are the reference.
TEST(InvariantKernelsCuda, TallTilesGiveTheBitsOfShortOnes) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  const auto bf16 = at::TensorOptions().device(cuda).dtype(at::kBFloat16);
  at::manual_seed(9);
  struct Case {
    int64_t rows, groups, tile_rows;
  };
  // The grouped product under GRPO_KERNEL_TRIAL=`kernels`: the choice of kernel is made at each call.
  constexpr const char* kShort = "-staged_tiles";
  auto product = [](const Tensor& x, const Tensor& w, const invariant::RowGroups& g, const char* kernels,
                    std::optional<at::ScalarType> round_to) {
    KernelTrialScope scope(kernels);
    return invariant::grouped_matmul_nt(x, w, g, round_to);
  };
  auto groups_under = [](const char* kernels, auto&& make) {
    KernelTrialScope scope(kernels);
    return make();
  };
  for (const Case& c : {Case{400, 16, 32}, Case{900, 6, 64}, Case{100, 16, 16}})
    for (int64_t K : {2048, 200}) {
      SCOPED_TRACE(std::to_string(c.rows) + " rows, " + std::to_string(c.groups) + " groups, K " + std::to_string(K));
      Tensor x = at::randn({c.rows, K}, bf16), w = at::randn({c.groups, 96, K}, bf16);
      Tensor group_of_row = at::randint(c.groups, {c.rows}, bf16.dtype(at::kLong));
      const invariant::RowGroups plain = groups_under(kShort, [&] { return invariant::group_rows(group_of_row, c.groups); });
      ASSERT_EQ(plain.tile_rows, 16);
      ASSERT_FALSE(plain.wide_tiles.defined());
      const Tensor xs = x.index_select(0, plain.order);
      for (const char* kernels : {"tall_tiles,-staged_tiles", ""}) {
        SCOPED_TRACE(kernels);
        const invariant::RowGroups tall = groups_under(kernels, [&] { return invariant::group_rows(group_of_row, c.groups); });
        EXPECT_EQ(tall.tile_rows, c.tile_rows);
        for (auto round_to : {std::optional<at::ScalarType>(), std::optional<at::ScalarType>(at::kBFloat16)}) {
          const Tensor want = product(xs, w, plain, kShort, round_to);
          EXPECT_TRUE(at::equal(product(xs, w, tall, kernels, round_to), want));
          EXPECT_TRUE(at::equal(product(xs, w, plain, kernels, round_to), want)) << "16-row tiles";
        }
      }
    }
  Tensor x = at::randn({8 * 120, 128}, bf16), w = at::randn({8, 512, 128}, bf16);
  const invariant::RowGroups plain = groups_under(kShort, [&] { return invariant::contiguous_groups(8, 120, cuda); });
  ASSERT_FALSE(plain.wide_tiles.defined());
  ASSERT_EQ(plain.tile_rows, 16);
  const Tensor want = product(x, w, plain, kShort, std::nullopt);
  for (const char* kernels : {"tall_tiles,-staged_tiles", ""}) {
    const invariant::RowGroups tall = groups_under(kernels, [&] { return invariant::contiguous_groups(8, 120, cuda); });
    EXPECT_EQ(tall.tile_rows, 64) << kernels;
    EXPECT_TRUE(at::equal(product(x, w, tall, kernels, std::nullopt), want)) << kernels;
  }
}

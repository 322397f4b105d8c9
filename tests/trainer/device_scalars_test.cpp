// DeviceScalars returns what it was given, in order and exactly, whatever the dtype; and
// grpo_loss's statistics vector turns into the shares and means the update logs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "trainer/device_scalars.h"
#include "trainer/grpo_loss.h"

using namespace grpo::trainer;
using at::Tensor;

TEST(DeviceScalars, ReadsEveryValueInOrderAndExactly) {
  DeviceScalars s;
  const float f = 0.1f;  // not a double: the read must give the float's own value
  EXPECT_EQ(s.add(at::full({}, f, at::kFloat)), 0u);
  EXPECT_EQ(s.add(at::tensor({1.5, -2.25, 3.0}, at::kDouble).to(at::kBFloat16)), 1u);
  EXPECT_EQ(s.add(at::full({2, 2}, (int64_t(1) << 52) + 1, at::kLong)), 4u);
  Tensor g = at::full({}, 2.0, at::kDouble).requires_grad_();
  EXPECT_EQ(s.add(g * 3), 8u);  // with a graph: read without it
  const std::vector<double> v = s.read();
  ASSERT_EQ(v.size(), 9u);
  EXPECT_EQ(v[0], (double)f);
  EXPECT_EQ(v[1], 1.5);
  EXPECT_EQ(v[2], -2.25);
  EXPECT_EQ(v[3], 3.0);
  for (int i = 4; i < 8; ++i) EXPECT_EQ(v[i], (double)((int64_t(1) << 52) + 1));
  EXPECT_EQ(v[8], 6.0);
  EXPECT_TRUE(s.read().empty());  // read() empties the queue
  EXPECT_EQ(s.add(at::ones({3})), 0u);
  EXPECT_EQ(s.read().size(), 3u);
}

TEST(DeviceScalars, LossStatisticsAreTheSharesOfRealTokens) {
  // Two sequences, the second with one padding token; eps 0.2: token (0,0) has ratio e^0.5 with
  // A > 0 (clipped high), token (1,0) ratio e^-0.5 with A < 0 (clipped low).
  Tensor logp = at::tensor({0.5, 0.0, -0.5, 0.0}, at::kFloat).view({2, 2});
  Tensor old = at::zeros({2, 2});
  Tensor mask = at::tensor({1.0, 1.0, 1.0, 0.0}, at::kFloat).view({2, 2});
  Tensor adv = at::tensor({1.0, -1.0}, at::kFloat);
  LossConfig c;
  c.epsilon_low = c.epsilon_high = 0.2;
  auto out = grpo_loss({logp, old, Tensor(), mask, adv, Tensor()}, c);
  ASSERT_EQ(out.stats.numel(), kLossStatCount);
  ASSERT_EQ(out.stats.scalar_type(), at::kDouble);
  Tensor raw = out.stats.contiguous();
  const double* v = raw.data_ptr<double>();
  EXPECT_EQ(v[kTokens], 3.0);
  EXPECT_EQ(v[kClippedHigh], 1.0);
  EXPECT_EQ(v[kClippedLow], 1.0);
  EXPECT_EQ(v[kClipped], 2.0);
  const LossStats st(v);
  EXPECT_DOUBLE_EQ(st.clip_fraction, 2.0 / 3);
  EXPECT_DOUBLE_EQ(st.clip_high_fraction, 1.0 / 3);
  EXPECT_NEAR(st.ratio_mean, (std::exp(0.5) + 1 + std::exp(-0.5)) / 3, 1e-6);
  EXPECT_EQ(st.kl, 0.0);  // beta 0
}

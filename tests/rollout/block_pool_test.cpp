// The KV cache's block pool: reservations guarantee growth, nothing is handed out twice, and every
// block comes back.
#include "rollout/block_pool.h"

#include <gtest/gtest.h>

#include <set>

#include "util/error.h"

using grpo::rollout::BlockPool;

TEST(BlockPool, HandsOutLowestFirstAndNeverTwice) {
  BlockPool pool(4);
  EXPECT_EQ(pool.take(), 0);
  EXPECT_EQ(pool.take(), 1);
  pool.release(0);
  EXPECT_EQ(pool.take(), 0);  // the freed block comes back first
  std::set<int32_t> out = {0, 1, pool.take(), pool.take()};
  EXPECT_EQ(out.size(), 4u);
  EXPECT_EQ(pool.free(), 0);
  EXPECT_THROW(pool.take(), grpo::Error);
  EXPECT_EQ(pool.peak_used(), 4);
}

TEST(BlockPool, ReservedBlocksAreKeptForTheirOwner) {
  BlockPool pool(5);
  int32_t prompt = pool.take();
  pool.reserve(3);  // a group's samples may grow into three more blocks
  EXPECT_EQ(pool.available(), 1);
  EXPECT_THROW(pool.reserve(2), grpo::Error);  // a second group must wait
  pool.take();                                 // one unreserved block is still there
  EXPECT_THROW(pool.take(), grpo::Error);      // the rest are promised
  int32_t a = pool.take_reserved(), b = pool.take_reserved();
  EXPECT_NE(a, b);
  EXPECT_EQ(pool.reserved(), 1);
  pool.unreserve(1);  // the last sample stopped early
  EXPECT_EQ(pool.available(), 1);
  EXPECT_THROW(pool.take_reserved(), grpo::Error);
  pool.release(a);
  pool.release(b);
  pool.release(prompt);
  EXPECT_EQ(pool.available(), 4);
  EXPECT_THROW(pool.unreserve(1), grpo::Error);
  EXPECT_THROW(pool.release(99), grpo::Error);
}

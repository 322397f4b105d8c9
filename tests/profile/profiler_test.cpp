// profile/profiler.h: host self times leave out an operator's children, the Chrome trace is written,
// a second session is refused, and the tables name, count and share correctly.
#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "profile/profiler.h"
#include "util/error.h"

namespace grpo::profile {
namespace {

TEST(Profiler, HostSelfTimeLeavesOutTheChildren) {
  const at::Tensor a = at::randn({384, 384}), b = at::randn({384, 384});
  const std::string trace = testing::TempDir() + "/profiler_test_trace.json";
  std::remove(trace.c_str());
  Recording r = record(
      [&] {
        RECORD_USER_SCOPE("outer");
        for (int i = 0; i < 4; ++i) at::mm(a, b);
      },
      /*cuda=*/false, trace);
  ASSERT_TRUE(r.host.count("aten::mm")) << "no aten::mm among " << r.host.size() << " host operators";
  ASSERT_TRUE(r.host.count("outer"));
  EXPECT_EQ(r.host["aten::mm"].calls, 4);
  EXPECT_EQ(r.host["outer"].calls, 1);
  EXPECT_GT(r.host["aten::mm"].ms, 0);
  // The scope does nothing but call the products: its own time is a small part of theirs.
  EXPECT_LT(r.host["outer"].ms, 0.5 * r.host["aten::mm"].ms);
  double self_total = 0;
  for (const auto& [name, t] : r.host) self_total += t.ms;
  EXPECT_LE(self_total, r.wall_ms * 1.05);  // one thread's self times cannot add up to more than the wall time
  EXPECT_TRUE(r.device.empty());

  std::ifstream in(trace);
  ASSERT_TRUE(in.good()) << "no trace at " << trace;
  const nlohmann::json j = nlohmann::json::parse(in);
  int mm_events = 0;
  for (const auto& e : j.at("traceEvents"))
    if (e.value("name", "") == "aten::mm") ++mm_events;
  EXPECT_EQ(mm_events, 4);
}

TEST(Profiler, ASecondSessionIsRefused) {
  bool refused = false;
  record(
      [&] {
        try {
          record([] {}, false);
        } catch (const Error& e) {
          refused = std::string(e.what()).find("already") != std::string::npos;
        }
      },
      false);
  EXPECT_TRUE(refused);
  EXPECT_NO_THROW(record([] {}, false));  // and the first one ended cleanly
}

TEST(Profiler, TablesCountAndShare) {
  OpTimes a{{"k1", {3, 6.0}}, {"k|2", {1, 2.0}}, {"k3", {2, 8.0}}}, b{{"k1", {1, 2.0}}};
  const auto d = difference(a, b);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].first, "k3");
  EXPECT_EQ(d[1].first, "k1");
  EXPECT_EQ(d[1].second.calls, 2);
  EXPECT_DOUBLE_EQ(d[1].second.ms, 4.0);
  EXPECT_DOUBLE_EQ(total_ms(d), 14.0);
  const std::string rows = table_rows(d, 2, 16.0);
  EXPECT_EQ(rows, "| k3 | 2 | 8.000 | 50.0% |\n| k1 | 2 | 4.000 | 25.0% |\n");
  EXPECT_NE(table_rows(d, 3, 16.0).find("| k\\|2 | 1 | 2.000 | 12.5% |"), std::string::npos);
}

}  // namespace
}  // namespace grpo::profile

// pass@k against hand-computed values and the estimator's definition; the shipped benchmarks load
// with the fields the rewards need; FILE.jsonl benchmarks; prompt formats.
#include <gtest/gtest.h>

#include <fstream>

#include "eval/benchmarks.h"
#include "eval/pass_at_k.h"
#include "util/error.h"

using namespace grpo::eval;

namespace {

double binomial(int64_t n, int64_t k) {
  if (k < 0 || k > n) return 0;
  double r = 1;
  for (int64_t i = 1; i <= k; ++i) r = r * (double)(n - k + i) / (double)i;
  return r;
}

}  // namespace

TEST(PassAtK, HandComputedValues) {
  EXPECT_DOUBLE_EQ(pass_at_k(1, 1, 1), 1.0);
  EXPECT_DOUBLE_EQ(pass_at_k(1, 0, 1), 0.0);
  EXPECT_DOUBLE_EQ(pass_at_k(10, 3, 1), 0.3);              // pass@1 is the fraction correct
  EXPECT_NEAR(pass_at_k(4, 1, 2), 0.5, 1e-15);             // 1 - C(3,2)/C(4,2) = 1 - 3/6
  EXPECT_NEAR(pass_at_k(5, 2, 3), 0.9, 1e-15);             // 1 - C(3,3)/C(5,3) = 1 - 1/10
  EXPECT_NEAR(pass_at_k(10, 2, 5), 1 - 56.0 / 252, 1e-15); // 1 - C(8,5)/C(10,5)
  EXPECT_DOUBLE_EQ(pass_at_k(6, 3, 4), 1.0);               // fewer than k wrong samples: certain
  for (int64_t n : {1, 5, 16, 40})
    for (int64_t c = 0; c <= n; ++c)
      for (int64_t k = 1; k <= n; ++k)
        EXPECT_NEAR(pass_at_k(n, c, k), 1 - binomial(n - c, k) / binomial(n, k), 1e-12) << n << " " << c << " " << k;
  EXPECT_NEAR(pass_at_k(200, 7, 100), 1 - binomial(193, 100) / binomial(200, 100), 1e-12);
  EXPECT_THROW(pass_at_k(4, 1, 5), std::invalid_argument);
  EXPECT_THROW(pass_at_k(4, 5, 1), std::invalid_argument);
}

TEST(Benchmarks, ShippedBenchmarksLoadWithWhatTheirRewardsNeed) {
  const std::string data = GRPO_SOURCE_DIR "/data";
  Benchmark g = load_benchmark("gsm8k", data);
  EXPECT_EQ(g.reward, "math");
  ASSERT_EQ(g.problems.size(), 1319u);
  EXPECT_EQ(g.problems[0].reference, "18");  // Janet's ducks: "#### 18"
  Benchmark m = load_benchmark("math500", data);
  ASSERT_EQ(m.problems.size(), 500u);
  EXPECT_EQ(m.problems[0].reference, "\\left( 3, \\frac{\\pi}{2} \\right)");
  Benchmark h = load_benchmark("humaneval", data);
  EXPECT_EQ(h.reward, "code");
  ASSERT_EQ(h.problems.size(), 164u);
  EXPECT_EQ(h.problems[0].metadata["entry_point"], "has_close_elements");
  EXPECT_NE(h.problems[0].metadata["test"].get<std::string>().find("def check(candidate)"), std::string::npos);
  Benchmark b = load_benchmark("mbpp", data);
  ASSERT_EQ(b.problems.size(), 974u);
  EXPECT_EQ(b.problems[0].metadata["test_list"].size(), 3u);
  EXPECT_NE(b.problems[0].prompt.find("Your code should pass these tests:\nassert"), std::string::npos);
  EXPECT_THROW(load_benchmark("gsm9k", data), grpo::Error);
  EXPECT_THROW(load_benchmark("gsm8k", "/nonexistent"), grpo::Error);
}

TEST(Benchmarks, FileBenchmarksAndPromptFormats) {
  const std::string path = testing::TempDir() + "/bench.jsonl";
  std::ofstream(path) << R"({"prompt": "2+2=", "answer": "4"})" "\n" R"({"prompt": "3+3=", "answer": 6})" "\n";
  Benchmark b = load_benchmark(path, "");
  EXPECT_EQ(b.reward, "math");
  ASSERT_EQ(b.problems.size(), 2u);
  EXPECT_EQ(b.problems[1].reference, "6");
  EXPECT_EQ(format_prompt(b, b.problems[0], "plain"), "2+2=");
  const std::string r1 = format_prompt(b, b.problems[0], "r1");
  EXPECT_NE(r1.find("User: 2+2=. Assistant:"), std::string::npos);
  EXPECT_THROW(format_prompt(b, b.problems[0], "alpaca"), grpo::Error);
  std::ofstream(path) << R"({"prompt": "def f():", "test": "def check(c): assert c() == 1", "entry_point": "f"})" "\n";
  b = load_benchmark(path, "");
  EXPECT_EQ(b.reward, "code");
  EXPECT_EQ(b.problems[0].metadata["entry_point"], "f");
  std::ofstream(path) << R"({"prompt": "x"})" "\n";
  try {
    load_benchmark(path, "");
    FAIL();
  } catch (const grpo::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path + ":1: expected a text field 'answer'"), std::string::npos) << e.what();
  }
}

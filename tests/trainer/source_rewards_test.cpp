// Rewards per data source: each item is scored by its source's combination (or the stage's
// default), results in input order; a recipe's rewards_by_source is checked at load.
#include "trainer/source_rewards.h"

#include <gtest/gtest.h>

#include <fstream>
#include <unistd.h>

#include "rewards/builtin.h"
#include "trainer/recipe.h"
#include "util/error.h"

using namespace grpo;
using namespace grpo::trainer;

TEST(SourceRewards, EachItemIsScoredByItsSourcesRewards) {
  RewardSettings r;
  r.spec = "math";
  r.by_source = {{"chat", "format"}, {"7", "tag_count"}};
  auto scorer = make_stage_scorer(r);
  const std::string formatted = "<think>\nok\n</think>\n<answer>\n5\n</answer>";
  std::vector<rewards::RewardItem> items = {
      {"", formatted, "5", {{"data_source", "gsm8k"}}},  // no entry: the default, math (right answer)
      {"", formatted, "6", {{"data_source", "chat"}}},   // format: 1 whatever the answer
      {"", "5", "5", {{"data_source", "chat"}}},         // format: 0
      {"", "5", "5", nlohmann::json::object()},          // no source: math
      {"", formatted, "", {{"data_source", 7}}},         // a number names a source by its JSON text
  };
  auto res = scorer->score(items);
  ASSERT_EQ(res.size(), 5u);
  EXPECT_EQ(res[0].reward, 1.0);
  EXPECT_TRUE(res[0].components.count("math"));
  EXPECT_EQ(res[1].reward, 1.0);
  EXPECT_TRUE(res[1].components.count("format"));
  EXPECT_FALSE(res[1].components.count("math"));
  EXPECT_EQ(res[2].reward, 0.0);
  EXPECT_TRUE(res[2].components.count("format"));
  EXPECT_EQ(res[3].reward, 1.0);
  EXPECT_TRUE(res[3].components.count("math"));
  EXPECT_TRUE(res[4].components.count("tag_count"));
  // Another column names the source when asked.
  r.source_field = "kind";
  r.by_source = {{"chat", "format"}};
  auto by_kind = make_stage_scorer(r)->score({{"", "5", "5", {{"kind", "chat"}, {"data_source", "gsm8k"}}}});
  EXPECT_TRUE(by_kind[0].components.count("format"));
}

TEST(SourceRewards, RecipesCheckEverySourcesRewardsAtLoad) {
  const std::string path = "/tmp/grpo_source_rewards_" + std::to_string(::getpid()) + ".yaml";
  std::ofstream(path) << "model_config: tiny.json\nrewards: math\nrewards_by_source: {gsm8k: 'math,format:0.2', chat: tag_count}\n";
  auto r = load_recipe(path);
  EXPECT_EQ(r.stages[0].rewards.by_source.at("gsm8k"), "math,format:0.2");
  EXPECT_EQ(r.stages[0].rewards.source_field, "data_source");
  std::ofstream(path) << "model_config: tiny.json\nrewards_by_source: {chat: helpfulnes}\n";
  try {
    load_recipe(path);
    FAIL() << "a misspelt reward of a source was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rewards_by_source 'chat': reward spec 'helpfulnes': unknown reward 'helpfulnes'"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

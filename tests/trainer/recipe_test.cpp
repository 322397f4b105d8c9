// Recipes parsed once into typed settings; the order of training prompts; checkpoint pruning.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "rewards/builtin.h"
#include "trainer/dataset.h"
#include "trainer/recipe.h"
#include "trainer/run_state.h"
#include "util/error.h"
#include "util/files.h"

using namespace grpo;
using namespace grpo::trainer;

namespace {

std::string scratch_dir() {
  static const std::string dir = "/tmp/grpo_recipe_test_" + std::to_string(::getpid());
  make_directories(dir);
  return dir;
}

std::string write_recipe(const std::string& name, const std::string& text) {
  std::string path = scratch_dir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// The message of the grpo::Error that `f` throws ("" when it does not throw).
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const char* kMinimal = "model_config: tiny.json\n";

}  // namespace

TEST(Recipe, KeysBecomeTypedSettingsWithDefaults) {
  auto r = load_recipe(write_recipe("typed.yaml", std::string(kMinimal) +
                                                      "loss_type: dr_grpo\nkl_estimator: k1\nscale_rewards: false\n"
                                                      "lr_scheduler_type: cosine\nepsilon: 0.1\nreward_workers: a:1, b:2\n"
                                                      "rewards: math,format:0.5\nrollout:\n  kv_cache_mb: 64\n"));
  ASSERT_EQ(r.stages.size(), 1u);
  const StageSettings& s = r.stages[0];
  EXPECT_EQ(s.loss.type, LossType::DrGrpo);
  EXPECT_EQ(s.loss.kl, KlEstimator::K1);
  EXPECT_EQ(s.advantages.scale_rewards, ScaleRewards::None);  // TRL's false
  EXPECT_EQ(s.optim.lr_scheduler_type, LrScheduler::Cosine);
  EXPECT_DOUBLE_EQ(s.loss.epsilon_low, 0.1);
  EXPECT_DOUBLE_EQ(s.loss.epsilon_high, 0.1);  // follows epsilon when not given
  EXPECT_EQ(s.rewards.workers, (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(s.rollout.kv_cache_mb, 64);  // written inside its section's mapping
  EXPECT_EQ(s.rollout.num_generations, 8);  // default
  EXPECT_EQ(s.loss.max_completion_length, s.rollout.max_completion_length);
  EXPECT_TRUE(s.checkpoint.profile_steps.empty());
  EXPECT_EQ(load_recipe(write_recipe("steps.yaml", std::string(kMinimal) + "profile_steps: [2, 5]\n"))
                .stages[0].checkpoint.profile_steps,
            (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(load_recipe(write_recipe("steps_text.yaml", std::string(kMinimal) + "profile_steps: 3,4\n"))
                .stages[0].checkpoint.profile_steps,
            (std::vector<int64_t>{3, 4}));
}

TEST(Recipe, ErrorsNameTheFileAndTheKey) {
  auto path = write_recipe("bad_value.yaml", std::string(kMinimal) + "num_generations: many\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find(path + ": key 'num_generations'"), std::string::npos);
  path = write_recipe("unknown.yaml", std::string(kMinimal) + "num_generation: 4\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("unknown key 'num_generation'"), std::string::npos);
  path = write_recipe("enum.yaml", std::string(kMinimal) + "loss_type: ppo\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'loss_type'"), std::string::npos);
  path = write_recipe("twice.yaml", std::string(kMinimal) + "beta: 0.1\nbeta: 0.2\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("given twice"), std::string::npos);
  path = write_recipe("section.yaml", std::string(kMinimal) + "rollout:\n  beta: 0.1\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("belongs to section 'loss'"), std::string::npos);
  path = write_recipe("range.yaml", std::string(kMinimal) + "num_generations: 1\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'num_generations': must be at least 2"), std::string::npos);
  path = write_recipe("profile.yaml", std::string(kMinimal) + "profile_steps: [0]\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'profile_steps': steps count from 1"), std::string::npos);
  path = write_recipe("profile_text.yaml", std::string(kMinimal) + "profile_steps: two\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'profile_steps': expected whole numbers"), std::string::npos);
  path = write_recipe("device.yaml", std::string(kMinimal) + "device: tpu\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'device'"), std::string::npos);
  // A key that is not plain text (YAML's "? " complex key), and a stage name that is a list: clear
  // errors naming the file, never a YAML exception escaping (found by the recipe_yaml fuzz target).
  path = write_recipe("complex_key.yaml", std::string(kMinimal) + "? [max_steps]\n: 3\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find(path + ": a key must be plain text"), std::string::npos);
  path = write_recipe("stage_name.yaml", std::string(kMinimal) + "stages:\n  - name: [a, b]\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("a stage's name must be plain text"), std::string::npos);
  EXPECT_NE(error_of([&] { parse_recipe("a: [1", "text.yaml"); }).find("text.yaml: not valid YAML"), std::string::npos);
}

TEST(Recipe, RewardSpecIsCheckedAtLoad) {
  auto path = write_recipe("reward.yaml", std::string(kMinimal) + "rewards: math,fromat:0.5\n");
  std::string e = error_of([&] { load_recipe(path); });
  EXPECT_NE(e.find(path + ": key 'rewards'"), std::string::npos) << e;
  EXPECT_NE(e.find("fromat"), std::string::npos) << e;
  path = write_recipe("weight.yaml", std::string(kMinimal) + "rewards: math:heavy\nreward_workers: localhost:1\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'rewards'"), std::string::npos);
  path = write_recipe("options.yaml", std::string(kMinimal) + "rewards: math\nreward_options: {math: {precision: 3}}\n");
  EXPECT_EQ(load_recipe(path).stages[0].rewards.options["math"]["precision"], 3);
}

TEST(Recipe, OverridesPassTheSameChecks) {
  auto path = write_recipe("over.yaml", std::string(kMinimal) + "max_steps: 10\n");
  auto r = load_recipe(path, {"max_steps=3", "rollout.temperature=0.5", "loss_type=grpo"});
  EXPECT_EQ(r.stages[0].optim.max_steps, 3);
  EXPECT_DOUBLE_EQ(r.stages[0].rollout.temperature, 0.5);
  EXPECT_EQ(r.stages[0].loss.type, LossType::Grpo);
  EXPECT_NE(error_of([&] { load_recipe(path, {"max_stepz=3"}); }).find("override 'max_stepz=3': unknown key"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_recipe(path, {"temperature=hot"}); }).find("override 'temperature=hot': key 'temperature'"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_recipe(path, {"temperature=0"}); }).find("key 'temperature': must be positive"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_recipe(path, {"max_steps"}); }).find("expected key=value"), std::string::npos);
}

TEST(Recipe, StagesInheritTheTopLevelAndTakeOverridesByName) {
  auto path = write_recipe("stages.yaml", std::string(kMinimal) + "learning_rate: 0.001\nstages:\n"
                                                                   "  - name: first\n    max_steps: 2\n"
                                                                   "  - name: second\n    type: grpo\n    learning_rate: 0.01\n");
  auto r = load_recipe(path, {"second.max_steps=7"});
  ASSERT_EQ(r.stages.size(), 2u);
  EXPECT_EQ(r.stages[0].name, "first");
  EXPECT_DOUBLE_EQ(r.stages[0].optim.learning_rate, 0.001);
  EXPECT_EQ(r.stages[0].optim.max_steps, 2);
  EXPECT_DOUBLE_EQ(r.stages[1].optim.learning_rate, 0.01);
  EXPECT_EQ(r.stages[1].optim.max_steps, 7);
  path = write_recipe("stage_type.yaml", std::string(kMinimal) + "stages:\n  - name: cold\n    type: ppo\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("stages[0]: key 'type'"), std::string::npos);
}

TEST(Recipe, SftStagesTakeTheirKeysAndStartFromEarlierStages) {
  auto path = write_recipe("sft.yaml", std::string(kMinimal) + "stages:\n"
                                       "  - {name: cold, type: sft, max_length: 512, packing: false, num_train_epochs: 2}\n"
                                       "  - {name: rl, model_dir: 'stage:cold', max_steps: 7}\n");
  auto r = load_recipe(path);
  ASSERT_EQ(r.stages.size(), 2u);
  EXPECT_EQ(r.stages[0].type, StageType::Sft);
  EXPECT_EQ(r.stages[0].sft.max_length, 512);
  EXPECT_FALSE(r.stages[0].sft.packing);
  EXPECT_EQ(r.stages[0].sft.num_train_epochs, 2);
  EXPECT_EQ(r.stages[0].optim.max_steps, 0);  // not given: the epochs decide
  EXPECT_EQ(r.stages[1].type, StageType::Grpo);
  EXPECT_EQ(r.stages[1].model.model_dir, "stage:cold");
  EXPECT_EQ(r.stages[1].optim.max_steps, 7);
  // A one-stage recipe takes its type at the top level; a given max_steps caps an sft stage.
  r = load_recipe(write_recipe("one_sft.yaml", std::string(kMinimal) + "type: sft\nmax_steps: 5\n"));
  EXPECT_EQ(r.stages[0].type, StageType::Sft);
  EXPECT_EQ(r.stages[0].optim.max_steps, 5);
  path = write_recipe("later.yaml", std::string(kMinimal) + "stages:\n  - {name: a, model_dir: 'stage:b'}\n  - {name: b}\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("'stage:b' names no earlier stage"), std::string::npos);
  path = write_recipe("bad_type.yaml", std::string(kMinimal) + "type: dpo\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'type': 'dpo': expected grpo, sft"), std::string::npos);
  // Speculative decoding combines with the exact mode and with routing replay.
  r = load_recipe(write_recipe("spec_exact.yaml", std::string(kMinimal) + "speculative_mtp: true\nexact_rollout: true\n"));
  EXPECT_TRUE(r.stages[0].rollout.speculative_mtp && r.stages[0].rollout.exact_rollout);
  r = load_recipe(write_recipe("spec_replay.yaml", std::string(kMinimal) + "speculative_mtp: true\nrouting_replay: true\n"));
  EXPECT_TRUE(r.stages[0].rollout.speculative_mtp && r.stages[0].moe.routing_replay);
  path = write_recipe("mtp_rm.yaml", std::string(kMinimal) + "type: reward_model\nmtp_loss_weight: 0.1\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'mtp_loss_weight': is for sft and grpo stages"), std::string::npos);
  path = write_recipe("bad_len.yaml", std::string(kMinimal) + "type: sft\nmax_length: 1\n");
  EXPECT_NE(error_of([&] { load_recipe(path); }).find("key 'max_length': must be at least 2"), std::string::npos);
}

TEST(Recipe, EveryKeyIsListedWithItsDefault) {
  auto keys = recipe_keys();
  std::set<std::string> names;
  for (const auto& k : keys) names.insert(k.name);
  EXPECT_EQ(names.size(), keys.size());
  for (const char* k : {"num_generations", "beta", "epsilon_high", "kv_cache_mb", "max_batch", "reward_options",
                        "reward_plugins", "save_total_limit", "shuffle"})
    EXPECT_TRUE(names.count(k)) << k;
  const std::string text = describe_recipe_keys();
  EXPECT_NE(text.find("num_generations = 8"), std::string::npos) << text;
  EXPECT_NE(text.find("loss_type = dapo"), std::string::npos) << text;
}

TEST(Dataset, WorkedAdditionSolutionsPassTheFormatAndMathRewards) {
  EXPECT_EQ(addition_solution(27, 94), "<think>\n7+4=11, write 1 carry 1\n2+9+1=12, write 12\n</think>\n<answer>\n121\n</answer>");
  EXPECT_EQ(addition_solution(5, 3), "<think>\n5+3=8, write 8\n</think>\n<answer>\n8\n</answer>");
  EXPECT_EQ(addition_solution(50, 7), "<think>\n0+7=7, write 7\n5+0=5, write 5\n</think>\n<answer>\n57\n</answer>");
  EXPECT_EQ(addition_solution(27, 94, true),
            "<think>\n7+4=11, write 1 carry 1\n2+9+1=12, write 12\ncheck: 121-94=27\n</think>\n<answer>\n121\n</answer>");
  DataSettings d;
  d.task = Task::AdditionCot;
  d.train_size = 300;
  d.eval_size = 20;
  Dataset data = load_dataset(d, "test");
  rewards::CombinedReward check("math,format", rewards::default_registry());
  for (const auto* part : {&data.train, &data.eval})
    for (const Example& ex : *part) {
      auto r = check.score({ex.prompt, ex.completion, ex.answer, nlohmann::json::object()});
      ASSERT_EQ(r.components["math"], 1.0) << ex.prompt << " " << ex.completion;
      ASSERT_EQ(r.components["format"], 1.0) << ex.completion;
    }
  // The plain task has no worked solutions, and the same problems.
  d.task = Task::Addition;
  Dataset plain = load_dataset(d, "test");
  EXPECT_EQ(plain.train[5].prompt, data.train[5].prompt);
  EXPECT_TRUE(plain.train[5].completion.empty());
}

TEST(PromptOrder, EachEpochIsAPermutationAndPositionsAloneDecide) {
  PromptOrder order(50, /*shuffle=*/true, /*seed=*/3);
  std::vector<size_t> first, second;
  for (int64_t p = 0; p < 50; ++p) first.push_back(order.at(p));
  for (int64_t p = 50; p < 100; ++p) second.push_back(order.at(p));
  EXPECT_EQ(std::set<size_t>(first.begin(), first.end()).size(), 50u);
  EXPECT_EQ(std::set<size_t>(second.begin(), second.end()).size(), 50u);
  EXPECT_NE(first, second);  // a new permutation each epoch
  std::vector<size_t> identity(50);
  for (size_t i = 0; i < 50; ++i) identity[i] = i;
  EXPECT_NE(first, identity);
  PromptOrder again(50, true, 3);  // a resumed run: same positions, same examples, in any query order
  EXPECT_EQ(again.at(73), second[23]);
  EXPECT_EQ(again.at(5), first[5]);
  PromptOrder plain(50, /*shuffle=*/false, 3);
  for (int64_t p = 0; p < 120; ++p) EXPECT_EQ(plain.at(p), size_t(p % 50));
}

TEST(CheckpointStore, KeepsTheNewestAndCheckpointZero) {
  const std::string out = scratch_dir() + "/store";
  CheckpointStore store(out, /*total_limit=*/2);
  for (int step : {0, 1, 2, 3, 10})
    store.save("checkpoint-" + std::to_string(step),
               [&](const std::string& dir) { write_file_atomic(dir + "/w", std::to_string(step)); });
  std::set<std::string> left;
  for (const auto& e : std::filesystem::directory_iterator(out))
    if (e.is_directory()) left.insert(e.path().filename().string());
  EXPECT_EQ(left, (std::set<std::string>{"checkpoint-0", "checkpoint-3", "checkpoint-10"}));
  EXPECT_EQ(store.latest(), out + "/checkpoint-10");
  EXPECT_EQ(read_file(store.latest() + "/w"), "10");
}

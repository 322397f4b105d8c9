// `grpo train RECIPE.yaml [key=value ...] [--output DIR] [--resume]`.
#include <signal.h>
#include <unistd.h>

#include "cli/commands.h"
#include "cli/common.h"
#include "rewards/builtin.h"
#include "trainer/reward_model_reward.h"
#include "trainer/train.h"

namespace grpo::cli {

namespace {
// The first SIGTERM or SIGINT lets the step in progress finish and be saved; a second one kills.
void on_stop_signal(int) {
  trainer::request_stop();
  const char msg[] = "\ngrpo train: stopping after this step (a second signal stops at once)\n";
  ssize_t unused = write(2, msg, sizeof msg - 1);
  (void)unused;
}
}  // namespace

int run_train(const TrainArgs& a) {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESETHAND;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  return torch_guard([&] {
    trainer::register_reward_model_reward(rewards::default_registry());
    auto recipe = trainer::load_recipe(a.recipe, a.overrides);
    trainer::TrainOptions o;
    o.output_dir = a.output;
    o.resume = a.resume;
    trainer::train(recipe, o);
    return 0;
  });
}

}  // namespace grpo::cli

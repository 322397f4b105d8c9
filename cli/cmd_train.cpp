// `grpo train RECIPE.yaml [key=value ...] [--output DIR] [--resume]`.
#include "cli/commands.h"
#include "cli/common.h"
#include "trainer/grpo_trainer.h"

namespace grpo::cli {

int run_train(const TrainArgs& a) {
  return torch_guard([&] {
    auto recipe = trainer::load_recipe(a.recipe, a.overrides);
    trainer::TrainOptions o;
    o.output_dir = a.output;
    o.resume = a.resume;
    trainer::train(recipe, o);
    return 0;
  });
}

}  // namespace grpo::cli

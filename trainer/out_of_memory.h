// A device running out of memory mid-run: the error names where it happened (step and phase), how
// the device's memory stood, and the recipe keys that bound the phase's memory, instead of the
// allocator's message alone. Checkpoints written before it are intact.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "trainer/recipe.h"

namespace grpo::trainer {

// Runs `work`. A CUDA out-of-memory error in it becomes an Error: "<where>: CUDA out of memory
// (<the allocator's figures>). To fit: <remedies, joined by "or">; ...". A remedy names a recipe
// key as the recipe spells it, with its value ("lower max_tokens_per_mini_batch (now 32768)").
void with_memory_advice(const std::string& where, const std::vector<std::string>& remedies,
                        const std::function<void()>& work);

// The remedies of a supervised stage's step (sft, distill, reward_model): the keys that bound a
// micro-batch (mini_batch_size, max_length, gradient_checkpointing), with their values.
std::vector<std::string> supervised_memory_remedies(const StageSettings& s);

}  // namespace grpo::trainer

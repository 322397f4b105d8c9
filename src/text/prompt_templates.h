// Prompt templates shared by training and evaluation.
#pragma once

namespace grpo::text {

// DeepSeek-R1-Zero's template (DeepSeek-R1 paper, Table 1); {prompt} is replaced by the question.
inline constexpr const char* kR1ZeroTemplate =
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. "
    "Assistant:";

}  // namespace grpo::text

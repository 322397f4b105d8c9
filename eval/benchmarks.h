// Benchmarks for `grpo eval`: each problem's prompt, reference and test metadata, and the reward
// that scores it (the same reward code as training: `math` for GSM8K and MATH-500, the sandboxed
// `code` reward for HumanEval and MBPP). Torch-free.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace grpo::eval {

struct Problem {
  std::string prompt;     // the question as the benchmark states it (before any prompt format)
  std::string reference;  // the answer (math); "" for code
  nlohmann::json metadata = nlohmann::json::object();  // the code reward's tests
  std::string where;      // file:line
};

struct Benchmark {
  std::string name;
  std::string reward;  // "math" or "code"
  std::vector<Problem> problems;
};

// `name` is gsm8k, math500, humaneval or mbpp (read from DATA_DIR: gsm8k_test.jsonl,
// math500_test.jsonl, humaneval.jsonl, mbpp.jsonl), or a FILE.jsonl with {"prompt", "answer"}
// lines (math) or {"prompt", "test", "entry_point"} lines (code). Errors name the file and line.
Benchmark load_benchmark(const std::string& name, const std::string& data_dir);

// The text the model is given: "plain" the prompt as it is; "r1" DeepSeek-R1-Zero's template for
// math, and for code the prompt followed by an instruction to answer in one fenced block.
std::string format_prompt(const Benchmark& b, const Problem& p, const std::string& format);

}  // namespace grpo::eval

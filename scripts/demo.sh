#!/usr/bin/env bash
# The built-in default job until the GRPO trainer lands (issue 7): create a tiny DeepSeek-V3-style
# MLA + MoE model with random weights, score completions with it, and tokenize text.
# Runs on a CPU in seconds. Output goes to ${1:-runs/demo}.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${1:-runs/demo}
mkdir -p "$out"
grpo=build/src/grpo
$grpo init --config scripts/bench/tiny.json --output "$out/tiny-model" --seed 0
printf '%s\n' '{"prompt_ids": [1, 17, 42, 99], "completion_ids": [5, 6, 7]}' \
              '{"prompt_ids": [3], "completion_ids": [200, 201]}' > "$out/pairs.jsonl"
$grpo logprobs --model "$out/tiny-model" --input "$out/pairs.jsonl" --output "$out/logprobs.jsonl"
echo "log-probs of the completion tokens ($out/logprobs.jsonl):"
cat "$out/logprobs.jsonl"

#!/usr/bin/env bash
# Tokenizer encoding speed: grpo vs HF tokenizers, same tokenizer.json and corpus, same run.
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" cpu
cmake --build "$build" --target grpo >/dev/null
"$py" scripts/bench/tokenizer_bench.py --grpo "$build/src/grpo" "$@"

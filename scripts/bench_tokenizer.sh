#!/usr/bin/env bash
# Tokenizer encoding speed: grpo vs HF tokenizers, same tokenizer.json and corpus, same run.
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" cpu
cmake --build "$build" --target grpo >/dev/null
# BENCH_DATA: a folder with benchmarks/ holding gsm8k_test.jsonl, math500_test.jsonl,
# HumanEval.jsonl.gz and mbpp.jsonl (the corpus of the tokenizer parity test).
: "${BENCH_DATA:?set BENCH_DATA to a folder with benchmarks/ (GSM8K, MATH-500, HumanEval, MBPP)}"
"$py" scripts/bench/tokenizer_bench.py --grpo "$build/bin/grpo" --data "$BENCH_DATA" "$@"

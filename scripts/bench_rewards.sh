#!/usr/bin/env bash
# Reward benchmarks, each with its baseline in the same run:
#   1. the math checker against Math-Verify on a corpus from MATH-500 and GSM8K answers: agreement,
#      disagreements, single-core checks/s of both (scripts/bench/math_verify_compare.py);
#   2. reward worker throughput over loopback gRPC with 1, 8 and 64 concurrent clients.
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" cpu
data=data  # MATH-500 and GSM8K, shipped
cmake --build "$build" --target grpo bench_reward_worker >/dev/null
echo "## math checker vs Math-Verify"
"$py" scripts/bench/math_verify_compare.py --grpo "$build/bin/grpo" --data "$data" --out bench-out/math_verify
echo
echo "## reward worker"
"$build/scripts/bench/bench_reward_worker" --seconds "${SECONDS_PER_POINT:-3}"

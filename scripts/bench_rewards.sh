#!/usr/bin/env bash
# Reward benchmarks, each with its baseline in the same run:
#   1. the math checker against Math-Verify on a corpus from MATH-500 and GSM8K answers: agreement,
#      disagreements, single-core checks/s of both (scripts/bench/math_verify_compare.py);
#   2. reward worker throughput over loopback gRPC with 1, 8 and 64 concurrent clients.
# With --soak [SECONDS] instead: 64 clients keep 1024 calls in flight on one worker serving math,
# format and code (a quarter of the code items hostile: endless loops, fork bombs, memory hogs,
# output floods, closed stdio, exit(0)) for SECONDS (60): per-class p50/p99 latency and items/s.
soak=""
if [ "${1:-}" = --soak ]; then soak=${2:-60}; fi
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" cpu
if [ -n "$soak" ]; then
  cmake --build "$build" --target bench_reward_soak >/dev/null
  exec "$build/scripts/bench/bench_reward_soak" --seconds "$soak"
fi
data=data  # MATH-500 and GSM8K, shipped
cmake --build "$build" --target grpo bench_reward_worker >/dev/null
echo "## math checker vs Math-Verify"
"$py" scripts/bench/math_verify_compare.py --grpo "$build/bin/grpo" --data "$data" --out bench-out/math_verify
echo
echo "## reward worker"
"$build/scripts/bench/bench_reward_worker" --seconds "${SECONDS_PER_POINT:-3}"

#!/usr/bin/env bash
# Sandbox benchmarks: executions/s of a trivial Python program through the sandbox on all cores
# and the per-run overhead over the bare interpreter (same run), then the wall time to run all of
# HumanEval's tests (164 canonical solutions) through the `code` reward.
# HumanEval is not shipped: set BENCH_DATA to a folder with benchmarks/HumanEval.jsonl.gz (openai/human-eval).
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" cpu
data=${BENCH_DATA:?set BENCH_DATA to a folder with benchmarks/HumanEval.jsonl.gz}/benchmarks
cmake --build "$build" --target bench_sandbox grpo >/dev/null
"$build/scripts/bench/bench_sandbox" --runs "${RUNS:-400}"
mkdir -p bench-out/sandbox
"$py" - "$data" <<'PY'
import gzip, json, sys
he = [json.loads(l) for l in gzip.open(sys.argv[1] + "/HumanEval.jsonl.gz", "rt")]
with open("bench-out/sandbox/humaneval.jsonl", "w") as f:
    for p in he:
        f.write(json.dumps({"completion": "```python\n" + p["prompt"] + p["canonical_solution"] + "\n```",
                            "metadata": {"test": p["test"], "entry_point": p["entry_point"]}}) + "\n")
PY
echo
echo "HumanEval, 164 canonical solutions through the code reward ($(nproc) threads):"
"$build/bin/grpo" reward --name code --threads "$(nproc)" --input bench-out/sandbox/humaneval.jsonl \
  --output bench-out/sandbox/humaneval.out.jsonl

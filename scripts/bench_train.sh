#!/usr/bin/env bash
# Time per GRPO step split into rollout / reward / train, from a short run's metrics.jsonl.
#   scripts/bench_train.sh           CPU: the tiny recipe (recipes/r1_zero_tiny.yaml), 40 GRPO steps
#   scripts/bench_train.sh gpu       GPU: a DeepSeek-V2-Lite-shaped model (GRPO_BENCH_LAYERS layers,
#                                    default 4, random weights, fp32) on the same addition task
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mode=${1:-cpu}
if [ "$mode" = gpu ]; then build=${BUILD:-build-gpu}; else build=${BUILD:-build}; fi
py=${GRPO_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
cmake --build "$build" --target grpo >/dev/null
work=bench-out/train-$mode
rm -rf "$work"; mkdir -p "$work"
steps=${STEPS:-40}
if [ "$mode" = gpu ]; then
  "$py" - "$work" "${GRPO_BENCH_LAYERS:-4}" <<'PY'
import json, sys
c = json.load(open("scripts/bench/v2_lite.json")); c["num_hidden_layers"] = int(sys.argv[2])
c["bos_token_id"], c["eos_token_id"], c["max_position_embeddings"] = 256, 257, 4096
json.dump(c, open(sys.argv[1] + "/model.json", "w"))
PY
  sed -e "s|^model_config: .*|model_config: $work/model.json|" -e "s|^max_steps: .*|max_steps: $steps|" \
      -e "s|^sft_steps: .*|sft_steps: 0|" -e "s|^eval_every: .*|eval_every: 0|" -e "s|^save_every: .*|save_every: 0|" \
      -e "s|^per_step_prompts: .*|per_step_prompts: 32|" -e "s|^max_completion_length: .*|max_completion_length: 64|" \
      recipes/r1_zero_tiny.yaml > "$work/recipe.yaml"
  echo "device: cuda" >> "$work/recipe.yaml"
else
  sed -e "s|^max_steps: .*|max_steps: $steps|" -e "s|^eval_every: .*|eval_every: 0|" -e "s|^save_every: .*|save_every: 0|" \
      recipes/r1_zero_tiny.yaml > "$work/recipe.yaml"
fi
"$build/src/grpo" train "$work/recipe.yaml" --output "$work/run" 2>&1 | tr '\r' '\n' | tail -2
"$py" - "$work/run/metrics.jsonl" "$mode" <<'PY'
import json, sys
rows = [m for m in map(json.loads, open(sys.argv[1])) if "time_train" in m][5:]  # skip warm-up steps
n = len(rows)
avg = {k: sum(m[k] for m in rows) / n for k in ("time_rollout", "time_reward", "time_train", "tokens_per_second",
                                                 "completion_length_mean")}
total = avg["time_rollout"] + avg["time_reward"] + avg["time_train"]
print(f"\n{sys.argv[2]}: {n} GRPO steps (32 prompts x 8 samples), completion length {avg['completion_length_mean']:.1f}")
print("| phase | seconds per step | share |\n|---|---|---|")
for k in ("time_rollout", "time_reward", "time_train"):
    print(f"| {k[5:]} | {avg[k]:.3f} | {100 * avg[k] / total:.0f}% |")
print(f"| total | {total:.3f} | |\n\ntokens/s (prompt + completion, all phases): {avg['tokens_per_second']:.0f}")
PY

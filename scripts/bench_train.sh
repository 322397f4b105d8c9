#!/usr/bin/env bash
# Time per GRPO step split into rollout / reward / train, from a short run's metrics.jsonl.
#   scripts/bench_train.sh           CPU: the tiny recipe (recipes/r1_zero_tiny.yaml), 40 GRPO steps
#   scripts/bench_train.sh gpu       GPU: a DeepSeek-V2-Lite-shaped model (GRPO_BENCH_LAYERS layers,
#                                    default 4, random weights) on the same addition task, twice:
#                                    fp32, then bf16 compute with fp32 master weights (PRECISIONS="fp32 bf16")
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-cpu}"
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
precisions=${PRECISIONS:-$( [ "$mode" = gpu ] && echo "fp32 bf16" || echo fp32 )}
for p in $precisions; do
  cp "$work/recipe.yaml" "$work/recipe-$p.yaml"
  [ "$p" = bf16 ] && echo "bf16: true" >> "$work/recipe-$p.yaml"
  "$build/bin/grpo" train "$work/recipe-$p.yaml" --output "$work/run-$p" 2>&1 | tr '\r' '\n' | tail -2
done
"$py" - "$mode" "$work" $precisions <<'PY'
import json, sys
mode, work, precs = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"\n{mode}: GRPO steps of 32 prompts x 8 samples, seconds per step (mean after 5 warm-up steps)")
print("| precision | completion length | rollout | reward | train | total | tokens/s | total vs " + precs[0] + " |")
print("|---|---|---|---|---|---|---|---|")
base = None
for p in precs:
    rows = [m for m in map(json.loads, open(f"{work}/run-{p}/metrics.jsonl")) if "time_train" in m][5:]
    n = len(rows)
    avg = {k: sum(m[k] for m in rows) / n for k in ("time_rollout", "time_reward", "time_train", "tokens_per_second",
                                                     "completions/mean_length")}
    total = avg["time_rollout"] + avg["time_reward"] + avg["time_train"]
    base = base or total
    print(f"| {p} | {avg['completions/mean_length']:.1f} | {avg['time_rollout']:.3f} | {avg['time_reward']:.3f} | "
          f"{avg['time_train']:.3f} | {total:.3f} | {avg['tokens_per_second']:.0f} | {base / total:.2f}x |")
PY

#!/usr/bin/env bash
# A smoke job for the rollout engine: create a tiny DeepSeek-V3-style MLA + MoE model with random
# weights, sample G = 4 completions per prompt, and check that their log-probs equal the
# trainer-side recompute (`grpo logprobs`). (The main job is `grpo train recipes/r1_zero_tiny.yaml`.)
# Runs on a CPU in seconds. Output goes to ${1:-runs/demo}.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${1:-runs/demo}
mkdir -p "$out"
grpo=build/bin/grpo
$grpo init --config scripts/bench/tiny.json --output "$out/tiny-model" --seed 0
printf '%s\n' '{"prompt_ids": [1, 17, 42, 99]}' '{"prompt_ids": [3]}' '{"prompt_ids": [7, 7, 8, 9, 10, 11]}' > "$out/prompts.jsonl"
$grpo generate --model "$out/tiny-model" --prompts "$out/prompts.jsonl" --output "$out/completions.jsonl" \
  -n 4 --max-new-tokens 32 --temperature 1.0 --seed 1
# The trainer's view of the same tokens: prompt + completion ids -> log-probs.
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
prompts = [json.loads(l)["prompt_ids"] for l in open(f"{out}/prompts.jsonl")]
with open(f"{out}/pairs.jsonl", "w") as f:
    for l in open(f"{out}/completions.jsonl"):
        c = json.loads(l)
        f.write(json.dumps({"prompt_ids": prompts[c["prompt_index"]], "completion_ids": c["completion_ids"]}) + "\n")
PY
$grpo logprobs --model "$out/tiny-model" --input "$out/pairs.jsonl" --output "$out/logprobs.jsonl"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
gen = [json.loads(l) for l in open(f"{out}/completions.jsonl")]
ref = [json.loads(l)["logprobs"] for l in open(f"{out}/logprobs.jsonl")]
worst = max(abs(a - b) for g, r in zip(gen, ref) for a, b in zip(g["logprobs"], r))
for g in gen[:4]:
    print(f"prompt {g['prompt_index']} sample {g['sample_index']}: {g['completion_ids'][:12]}... ({g['finish_reason']})")
print(f"{len(gen)} completions in {out}/completions.jsonl; max |rollout - recompute| log-prob = {worst:.2e}")
PY

#!/usr/bin/env bash
# One GRPO step of DeepSeek-V2-Lite's shape (all 27 layers, random weights, bf16) with LoRA adapters
# on attention and routed experts (all-linear) on one GPU: 32 prompts x 16 samples with up to 1024
# completion tokens (random weights rarely stop early), reference = the base (adapters off, beta
# 0.04), gradient checkpointing, mini-batches by token budget. Prints the last step's time split,
# tokens/s and peak memory from metrics.jsonl.
#   scripts/bench_lora_step.sh gpu   (STEPS default 2, LORA_R 16, LENGTH 1024, TOKENS per mini-batch 32768)
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-gpu}"
cmake --build "$build" --target grpo >/dev/null
work=bench-out/lora-step
rm -rf "$work"; mkdir -p "$work"
"$py" - "$work" <<'PY'
import json, sys
c = json.load(open("scripts/bench/v2_lite.json"))
c["bos_token_id"], c["eos_token_id"], c["max_position_embeddings"] = 256, 257, 4096
json.dump(c, open(sys.argv[1] + "/model.json", "w"))
PY
cat > "$work/recipe.yaml" <<YAML
model_config: $work/model.json
device: cuda
bf16: true
tokenizer: builtin:bytes
task: addition
train_size: 1024
eval_size: 8
rewards: math
lora_r: ${LORA_R:-16}
lora_alpha: $(( 2 * ${LORA_R:-16} ))
gradient_checkpointing: true
max_tokens_per_mini_batch: ${TOKENS:-32768}
per_step_prompts: 32
num_generations: 16
max_completion_length: ${LENGTH:-1024}
kv_cache_mb: 24000
beta: 0.04
learning_rate: 0.00001
max_steps: ${STEPS:-2}
eval_every: 0
save_every: 0
sft_steps: 0
YAML
"$build/bin/grpo" train "$work/recipe.yaml" --output "$work/run" 2>&1 | tr '\r' '\n' | grep -v "^\s*$" | tail -4
"$py" - "$work/run/metrics.jsonl" <<'PY'
import json, sys
m = [x for x in map(json.loads, open(sys.argv[1])) if "time_train" in x][-1]
total = m["time_rollout"] + m["time_reward"] + m["time_train"]
print("\n| step | samples | mean completion | rollout s | reward s | train s | total s | tokens/s | peak allocated GB | peak reserved GB | rollout_logprob_diff |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
print(f"| {m['step']} | 512 | {m['completions/mean_length']:.0f} | {m['time_rollout']:.1f} | {m['time_reward']:.2f} | "
      f"{m['time_train']:.1f} | {total:.1f} | {m['tokens_per_second']:.0f} | {m.get('memory/peak_allocated_gb', 0):.1f} | "
      f"{m.get('memory/peak_reserved_gb', 0):.1f} | {m['rollout_logprob_diff']:.2e} |")
PY

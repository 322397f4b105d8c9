#!/usr/bin/env bash
# One GRPO step on one GPU at a real model's shape (random weights, bf16 compute): 32 prompts x 16
# samples with up to 1024 completion tokens (random weights rarely stop early), KL to the reference
# (beta 0.04), gradient checkpointing, mini-batches by token budget. Prints the last step's time
# split, tokens/s, peak memory and the training MFU against the bf16 matrix-product rate measured
# in the same run.
#   MODEL=v2_lite: DeepSeek-V2-Lite (all 27 layers) with LoRA (LORA_R, default 16) on attention and
#                  routed experts; the reference is the base (adapters off).
#   MODEL=qwen:    Qwen2.5-1.5B, full fine-tuning (fp32 master weights and AdamW, bf16 compute copy,
#                  bf16 reference copy).
#   scripts/bench_grpo_step.sh gpu   (MODEL default v2_lite; STEPS default 2; LENGTH 1024; TOKENS per
#                                     mini-batch 32768; CHECKPOINTING true)
# EXACT=1: with exact_rollout (the batch-invariant forward in the engine and for the update's values):
# the GRPO-shaped cost of the exact mode, to set against a run without it. Step 1 recomputes the
# update's values through the batch-invariant forward (a check step), later steps take the engine's
# (exact_rollout_check_every); the table shows the last step. GRPO_KERNEL_TRIAL passes through to
# the run (src/model/kernel_trial.h).
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-gpu}"
cmake --build "$build" --target grpo >/dev/null
model=${MODEL:-v2_lite}
case "$model" in
  v2_lite) config=scripts/bench/v2_lite.json; lora=${LORA_R:-16}; lr=0.00001 ;;
  qwen) config=scripts/bench/qwen2_5_1_5b.json; lora=${LORA_R:-0}; lr=0.000001 ;;
  *) echo "MODEL must be v2_lite or qwen" >&2; exit 2 ;;
esac
work=bench-out/grpo-step-$model${EXACT:+-exact}
rm -rf "$work"; mkdir -p "$work"
"$py" - "$config" "$work" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["bos_token_id"], c["eos_token_id"], c["max_position_embeddings"] = 256, 257, 4096
json.dump(c, open(sys.argv[2] + "/model.json", "w"))
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
lora_r: $lora
lora_alpha: $(( 2 * lora ))
gradient_checkpointing: ${CHECKPOINTING:-true}
max_tokens_per_mini_batch: ${TOKENS:-32768}
per_step_prompts: 32
num_generations: 16
max_completion_length: ${LENGTH:-1024}
kv_cache_mb: 24000
beta: 0.04
learning_rate: $lr
max_steps: ${STEPS:-2}
eval_every: 0
save_every: 0
sft_steps: 0
exact_rollout: $([ -n "${EXACT:-}" ] && echo true || echo false)
YAML
# Stopped (SIGKILL) once the last step's metrics are written: the final checkpoint of a random
# 16B base would write 64 GB of fp32 weights, which is not what is measured here.
"$build/bin/grpo" train "$work/recipe.yaml" --output "$work/run" >"$work/log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  done_steps=$(grep -c '"time_train"' "$work/run/metrics.jsonl" 2>/dev/null || true)
  if [ "${done_steps:-0}" -ge "${STEPS:-2}" ]; then
    kill -9 "$pid"; break
  fi
  sleep 1
done
wait "$pid" 2>/dev/null || true
tr '\r' '\n' <"$work/log" | grep -v "^\s*$" | tail -4
"$py" - "$work/run/metrics.jsonl" "$model" "$lora" "${EXACT:-}" "${GRPO_KERNEL_TRIAL:-}" <<'PY'
import json, sys, time
import torch
# The machine's bf16 matrix-product rate, measured now: 8192^3 products.
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(20):
    a @ b
torch.cuda.synchronize()
peak = 20 * 2 * 8192 ** 3 / (time.perf_counter() - t) / 1e12
steps = [x for x in map(json.loads, open(sys.argv[1])) if "time_train" in x]
m = steps[-1]
# exact_rollout measures rollout_logprob_diff on its check steps only (step 1, ...): the last measure.
diff = next((x["rollout_logprob_diff"] for x in reversed(steps) if "rollout_logprob_diff" in x), float("nan"))
total = m["time_rollout"] + m["time_reward"] + m["time_train"]
name = {"v2_lite": "V2-Lite 27 layers, LoRA r" + sys.argv[3], "qwen": "Qwen2.5-1.5B, full fine-tuning"}[sys.argv[2]]
if sys.argv[4]:
    name += ", exact_rollout" + (f" (kernels on trial: {sys.argv[5]})" if sys.argv[5] else "")
tf = m["perf/train_tflops"]
print(f"\nbf16 matrix-product rate measured in this run: {peak:.0f} TFLOP/s")
print("| model | step | samples | mean completion | rollout s | reward s | train s | total s | tokens/s | train TFLOP/s | train MFU | peak allocated GB | peak reserved GB | rollout_logprob_diff |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
print(f"| {name} | {m['step']} | 512 | {m['completions/mean_length']:.0f} | {m['time_rollout']:.1f} | {m['time_reward']:.2f} | "
      f"{m['time_train']:.1f} | {total:.1f} | {m['tokens_per_second']:.0f} | {tf:.0f} | {100 * tf / peak:.1f}% | "
      f"{m.get('memory/peak_allocated_gb', 0):.1f} | {m.get('memory/peak_reserved_gb', 0):.1f} | {diff:.2e} |")
PY

#!/usr/bin/env bash
# One GRPO step at a real model's shape (random weights, bf16 compute): 32 prompts x 16 samples with
# up to 1024 completion tokens (random weights rarely stop early), KL to the reference (beta 0.04),
# gradient checkpointing, mini-batches by token budget. Prints each step's time split, tokens/s,
# peak memory and the training MFU against the bf16 matrix-product rate measured in the same run.
#   MODEL=v2_lite: DeepSeek-V2-Lite (all 27 layers) with LoRA (LORA_R, default 16) on attention and
#                  routed experts; the reference is the base (adapters off). LORA_R=0: full
#                  fine-tuning (fp32 master weights and AdamW, bf16 compute and reference copies).
#   MODEL=qwen:    Qwen2.5-1.5B, full fine-tuning.
#   MODEL=tiny:    the 4-layer test model (the default on cpu; 8 prompts, 64 tokens), to try the script.
#   scripts/bench_grpo_step.sh [gpu|cpu]  (MODEL default v2_lite on gpu; STEPS default 2; LENGTH 1024;
#                                          TOKENS per mini-batch 32768; CHECKPOINTING true; PROMPTS 32)
# NPROC=N: data parallel over N ranks under `grpo launch` (one GPU each, NCCL; Gloo on cpu), the same
# global batch; ZERO=1|2: zero_stage; LAYERS=L: the first L layers only. The table's MFU is per GPU.
# EXACT=1: with exact_rollout (the batch-invariant forward in the engine and for the update's values):
# the GRPO-shaped cost of the exact mode, to set against a run without it. Step 1 recomputes the
# update's values through the batch-invariant forward (a check step), later steps take the engine's
# (exact_rollout_check_every); the table has a row per step. GRPO_KERNEL_TRIAL passes through to
# the run (src/model/kernel_trial.h). CHECK_EVERY=K: exact_rollout_check_every (0: no check step, so
# step 1 already reuses the engine's values).
# PROFILE=N: step N runs under the profiler (profile_steps); its tables of where the rollout's and the
# update's time went are printed after the step table, and its Chrome traces stay in the run's
# profile/ directory. A profiled step's times include the profiler's overhead (its row says so).
# The run's directory is bench-out/grpo-step-<model>[-exact]-<N>rank (GRPO_STEP_DIR overrides).
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-gpu}"
cmake --build "$build" --target grpo >/dev/null
# NVLink multicast stays off (it can take a shared host's GPUs out of service).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
device=$([ "$mode" = gpu ] && echo cuda || echo cpu)
model=${MODEL:-$([ "$mode" = gpu ] && echo v2_lite || echo tiny)}
case "$model" in
  v2_lite) config=scripts/bench/v2_lite.json; lora=${LORA_R:-16}; lr=0.00001 ;;
  qwen) config=scripts/bench/qwen2_5_1_5b.json; lora=${LORA_R:-0}; lr=0.000001 ;;
  tiny) config=recipes/tiny_model.json; lora=${LORA_R:-0}; lr=0.0001 ;;
  *) echo "MODEL must be v2_lite, qwen or tiny" >&2; exit 2 ;;
esac
nproc=${NPROC:-1}
length=${LENGTH:-$([ "$model" = tiny ] && echo 64 || echo 1024)}
prompts=${PROMPTS:-$([ "$model" = tiny ] && echo 8 || echo 32)}
work=${GRPO_STEP_DIR:-bench-out/grpo-step-$model${EXACT:+-exact}-${nproc}rank}
rm -rf "$work"; mkdir -p "$work"
"$py" - "$config" "$work" "${LAYERS:-0}" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["bos_token_id"], c["eos_token_id"] = 256, 257
c["max_position_embeddings"] = max(c.get("max_position_embeddings", 0), 4096)
if int(sys.argv[3]) > 0:
    c["num_hidden_layers"] = int(sys.argv[3])
json.dump(c, open(sys.argv[2] + "/model.json", "w"))
PY
cat > "$work/recipe.yaml" <<YAML
model_config: $work/model.json
device: $device
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
per_step_prompts: $prompts
num_generations: 16
max_completion_length: $length
kv_cache_mb: $([ "$mode" = gpu ] && echo 24000 || echo 256)
beta: 0.04
learning_rate: $lr
max_steps: ${STEPS:-2}
zero_stage: ${ZERO:-0}
eval_every: 0
save_every: 0
sft_steps: 0
exact_rollout: $([ -n "${EXACT:-}" ] && echo true || echo false)
exact_rollout_check_every: ${CHECK_EVERY:-10}
profile_steps: [${PROFILE:-}]
YAML
# Stopped (SIGKILL; the ranks follow their launcher) once the last step's metrics are written: the
# final checkpoint of a random 16B base would write 64 GB of fp32 weights, which is not measured here.
cmd=("$build/bin/grpo" train "$work/recipe.yaml" --output "$work/run")
[ "$nproc" -gt 1 ] && cmd=("$build/bin/grpo" launch --nproc-per-node "$nproc" --master-port "${PORT:-29731}" -- "${cmd[@]}")
"${cmd[@]}" >"$work/log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  done_steps=$(grep -c '"time_train"' "$work/run/metrics.jsonl" 2>/dev/null || true)
  # A profiled step's tables are written just after its metrics.
  profiled=$([ -z "${PROFILE:-}" ] || ls "$work"/run/profile/step-"$PROFILE"{,-rank-0}.md 2>/dev/null || true)
  if [ "${done_steps:-0}" -ge "${STEPS:-2}" ] && { [ -z "${PROFILE:-}" ] || [ -n "$profiled" ]; }; then
    kill -9 "$pid"; break
  fi
  sleep 1
done
wait "$pid" 2>/dev/null || true
tr '\r' '\n' <"$work/log" | grep -v "^\s*$" | tail -4
"$py" - "$work/run/metrics.jsonl" "$model" "$lora" "${EXACT:-}" "${GRPO_KERNEL_TRIAL:-}" "$device" "$nproc" \
  "${ZERO:-0}" "${LAYERS:-}" "${PROFILE:-}" <<'PY'
import json, sys, time
import torch
model, lora, exact, trial, device, nproc, zero, layers, profiled = sys.argv[2:11]
# The machine's bf16 matrix-product rate, measured now (8192^3 products on a GPU, 2048^3 on CPU).
n = 8192 if device == "cuda" else 2048
a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
for _ in range(3):
    a @ b
sync()
t = time.perf_counter()
reps = 20 if device == "cuda" else 3
for _ in range(reps):
    a @ b
sync()
peak = reps * 2 * n ** 3 / (time.perf_counter() - t) / 1e12
steps = [x for x in map(json.loads, open(sys.argv[1])) if "time_train" in x]
name = {"v2_lite": "V2-Lite", "qwen": "Qwen2.5-1.5B", "tiny": "tiny test model"}[model]
name += f" {layers} layers" if layers else (" 27 layers" if model == "v2_lite" else "")
name += f", LoRA r{lora}" if int(lora) > 0 else ", full fine-tuning"
if int(zero) > 0:
    name += f", zero_stage {zero}"
if exact:
    name += ", exact_rollout" + (f" (kernels on trial: {trial})" if trial else "")
print(f"\nbf16 matrix-product rate measured in this run: {peak:.0f} TFLOP/s per {'GPU' if device == 'cuda' else 'CPU'}")
print("| model | ranks | step | mean completion | rollout s | reward s | train s | total s | tokens/s | train TFLOP/s | train MFU per rank | peak allocated GB | peak reserved GB | rollout_logprob_diff |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in steps:  # step 1 includes the first step's set-up (CUDA graphs captured, kernels loaded)
    total = m["time_rollout"] + m["time_reward"] + m["time_train"]
    tf = m["perf/train_tflops"]
    # exact_rollout measures rollout_logprob_diff on its check steps only (exact_rollout_check_every).
    diff = f"{m['rollout_logprob_diff']:.2e}" if "rollout_logprob_diff" in m else "-"
    step = f"{m['step']}" + (" (profiled)" if profiled and int(profiled) == m["step"] else "")
    print(f"| {name} | {nproc} | {step} | {m['completions/mean_length']:.0f} | {m['time_rollout']:.1f} | {m['time_reward']:.2f} | "
          f"{m['time_train']:.1f} | {total:.1f} | {m['tokens_per_second']:.0f} | {tf:.1f} | {100 * tf / peak / int(nproc):.1f}% | "
          f"{m.get('memory/peak_allocated_gb', 0):.1f} | {m.get('memory/peak_reserved_gb', 0):.1f} | {diff} |")
PY
if [ -n "${PROFILE:-}" ]; then
  for f in "$work"/run/profile/step-"$PROFILE"{,-rank-0}.md; do
    if [ -f "$f" ]; then echo; cat "$f"; fi
  done
fi

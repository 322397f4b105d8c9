#!/usr/bin/env bash
# The same GRPO recipe on one GPU three ways, at DeepSeek-V2-Lite's shape (random weights, bf16,
# LoRA r16 on attention and routed experts, LAYERS decoder layers, default 8):
#   sync            the plain loop: rollout, then the update;
#   async_rollout 1 one-step-off: the next step's batch is sampled (second thread, second CUDA stream,
#                   a copy of the policy) while this step trains;
#   routing_replay  the plain loop with the rollout's experts imposed on the training forwards.
# Every run recomputes pi_old and applies token-level rollout importance sampling, so the three
# differ only in what is measured. Prints per mode the mean step time over the steps after the
# first, its split, the speed-up over sync, rollout_logprob_diff, and for routing replay the
# training router's agreement with the rollout's experts and the size of the records.
#   scripts/bench_async_rollout.sh gpu   (LAYERS 8, STEPS 4, PROMPTS 16, G 8, LENGTH 512;
#   ROLLOUT_DEVICE=cuda:1 on a machine with two GPUs: also one-step-off with the copy on that GPU)
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-gpu}"
cmake --build "$build" --target grpo >/dev/null
work=bench-out/async-rollout
rm -rf "$work"; mkdir -p "$work"
steps=${STEPS:-4}
"$py" - scripts/bench/v2_lite.json "$work" "${LAYERS:-8}" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["bos_token_id"], c["eos_token_id"], c["max_position_embeddings"] = 256, 257, 4096
c["num_hidden_layers"] = int(sys.argv[3])
json.dump(c, open(sys.argv[2] + "/model.json", "w"))
PY
run() {  # name, extra recipe lines
  cat > "$work/$1.yaml" <<YAML
model_config: $work/model.json
device: cuda
bf16: true
tokenizer: builtin:bytes
task: addition
train_size: 1024
eval_size: 8
rewards: math
lora_r: 16
lora_alpha: 32
gradient_checkpointing: true
max_tokens_per_mini_batch: 32768
per_step_prompts: ${PROMPTS:-16}
num_generations: ${G:-8}
max_completion_length: ${LENGTH:-512}
kv_cache_mb: 12000
beta: 0.0
recompute_old_logprobs: true
rollout_is: token
learning_rate: 0.00001
max_steps: $steps
eval_every: 0
save_every: 0
sft_steps: 0
$2
YAML
  # Stopped once the last step's metrics are written (the final checkpoint is not what is measured).
  "$build/bin/grpo" train "$work/$1.yaml" --output "$work/$1" >"$work/$1.log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    local n; n=$(grep -c '"time_train"' "$work/$1/metrics.jsonl" 2>/dev/null || true)
    if [ "${n:-0}" -ge "$steps" ]; then kill -9 "$pid"; break; fi
    sleep 1
  done
  wait "$pid" 2>/dev/null || true
  tr '\r' '\n' <"$work/$1.log" | grep -v "^\s*$" | tail -2
}
run sync ""
run async1 "async_rollout: 1"
run replay "routing_replay: true"
# On a machine with a second GPU (ROLLOUT_DEVICE=cuda:1): the sampling copy there.
modes="sync async1 replay"
if [ -n "${ROLLOUT_DEVICE:-}" ]; then
  run async1_device "async_rollout: 1
rollout_device: $ROLLOUT_DEVICE"
  modes="$modes async1_device"
fi
"$py" - "$work" "$steps" "${LAYERS:-8}" "$modes" "${ROLLOUT_DEVICE:-}" <<'PY'
import json, os, sys
work, steps, modes = sys.argv[1], int(sys.argv[2]), sys.argv[4].split()
rows = {}
for mode in modes:
    lines = [json.loads(l) for l in open(os.path.join(work, mode, "metrics.jsonl"))]
    m = [x for x in lines if "time_train" in x and x["step"] >= 2]
    rows[mode] = m
def step_time(x, mode):  # the step's wall-clock time, batch to metrics
    return x["time_step"]
base = sum(step_time(x, "sync") for x in rows["sync"]) / len(rows["sync"])
print(f"\nV2-Lite shape, {sys.argv[3]} layers, LoRA r16, bf16; steps 2..{steps} averaged")
print("| mode | s/step | rollout s | train s | waited for batch s | speed-up vs sync | rollout_logprob_diff | routing agreement | replay MB/step |")
print("|---|---|---|---|---|---|---|---|---|")
labels = {"sync": "sync", "async1": "async_rollout 1", "replay": "routing_replay",
          "async1_device": f"async_rollout 1, rollout_device {sys.argv[5]}"}
for mode in modes:
    label, m = labels[mode], rows[mode]
    avg = lambda k: sum(x.get(k, 0) for x in m) / len(m)
    st = sum(step_time(x, mode) for x in m) / len(m)
    agree = f"{avg('routing/agreement'):.4f}" if mode == "replay" else "-"
    mb = f"{avg('routing/replay_mb'):.1f}" if mode == "replay" else "-"
    wait = f"{avg('time_rollout_wait'):.2f}" if mode.startswith("async1") else "-"
    print(f"| {label} | {st:.2f} | {avg('time_rollout'):.2f} | {avg('time_train'):.2f} | {wait} | {base / st:.2f}x | "
          f"{avg('rollout_logprob_diff'):.2e} | {agree} | {mb} |")
PY

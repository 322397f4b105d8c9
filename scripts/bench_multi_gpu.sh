#!/usr/bin/env bash
# Data-parallel GRPO on the GPUs of one host (NCCL, one rank per GPU), in one call:
#   scaling:  one GRPO step of the same global batch (scripts/bench_grpo_step.sh: V2-Lite shape, LoRA,
#             32 prompts x 16 samples) on each count of GPUS (default 1,2,4,8, up to the GPUs here):
#             time split, tokens/s, and the speed-up and efficiency against 1 GPU;
#   zero:     DeepSeek-V2-Lite, all 27 layers, full fine-tuning with zero_stage 2 on every GPU here
#             (ZERO_GPUS overrides): one step, the fullest GPU's peak memory and the time split;
#   equality: fp32, the tiny model: 2 ranks x 4 prompts against 1 rank x 8 prompts, 3 steps: the
#             largest difference in the final weights (the bound is 1e-5);
#   kill:     rank 1 killed (SIGKILL) mid-step under `grpo launch`: how long until every process has
#             ended, and the error; then ranks started by hand (no launcher) with rank 1 frozen
#             (SIGSTOP): rank 0 ends within ddp_timeout (KILL_TIMEOUT, default 60 s), and its error.
#   single:   what one GPU allows of the above: the tiny fp32 recipe as one rank under `grpo launch`
#             (the NCCL communicator with world size 1: bucketed gradient all-reduce, the ranks'
#             agreement on metrics and stops, ZeRO's ownership) with zero_stage 0 and 2, against the
#             same recipe with no launcher, 3 steps: the largest difference in the final weights.
#   scripts/bench_multi_gpu.sh [gpu|cpu]   (cpu: the same on Gloo ranks with the tiny model, to try it)
# PARTS (default scaling,zero,equality,kill,single); LENGTH, STEPS, LAYERS pass to bench_grpo_step.sh. Results
# are appended to bench-out/multi-gpu/results.jsonl, so that parts run in separate calls share one
# table (FRESH=1 starts it anew); the table is printed from everything there.
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-gpu}"
cmake --build "$build" --target grpo >/dev/null
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=bench-out/multi-gpu
[ -n "${FRESH:-}" ] && rm -rf "$out"
mkdir -p "$out"
log="$out/results.jsonl"
touch "$log"
want() { [[ ",${PARTS:-scaling,zero,equality,kill,single}," == *",$1,"* ]]; }
if [ "$mode" = gpu ]; then
  have=$(nvidia-smi -L | grep -c '^GPU')
  device=cuda
else
  have=2
  device=cpu
fi
echo "$have $([ "$mode" = gpu ] && echo GPU || echo CPU rank)s available"
grpo=$build/bin/grpo
step_model=$([ "$mode" = gpu ] && echo v2_lite || echo tiny)

# The last trained step of a run as one line of results.
record() {  # part ranks run_dir [extra json]
  "$py" - "$@" >> "$log" <<'PY'
import json, sys
part, ranks, run = sys.argv[1:4]
steps = [x for x in map(json.loads, open(run + "/metrics.jsonl")) if "time_train" in x]
m = steps[-1]
keep = ("step", "time_rollout", "time_reward", "time_train", "tokens_per_second", "perf/train_tflops",
        "completions/mean_length", "memory/peak_allocated_gb", "memory/peak_reserved_gb")
r = {"part": part, "ranks": int(ranks), **{k: m[k] for k in keep if k in m}}
if len(sys.argv) > 4:
    r.update(json.loads(sys.argv[4]))
print(json.dumps(r))
PY
  tail -1 "$log"
}

if want scaling; then
  for n in $(echo "${GPUS:-1,2,4,8}" | tr ',' ' '); do
    [ "$n" -gt "$have" ] && { echo "scaling: $n ranks skipped ($have here)"; continue; }
    dir="$out/scaling-$n"
    MODEL=$step_model NPROC=$n GRPO_STEP_DIR="$dir" PORT=29741 bash scripts/bench_grpo_step.sh "$mode" | tail -3 ||
      echo "scaling: $n ranks failed; the run's output is in $dir/log"
    if grep -qs '"time_train"' "$dir/run/metrics.jsonl"; then record scaling "$n" "$dir/run"; fi
  done
fi

if want zero; then
  n=${ZERO_GPUS:-$have}
  dir="$out/zero2-$n"
  MODEL=$step_model LORA_R=0 ZERO=2 NPROC=$n GRPO_STEP_DIR="$dir" PORT=29742 STEPS=${STEPS:-1} \
    bash scripts/bench_grpo_step.sh "$mode" | tail -3 || true
  if grep -qs '"time_train"' "$dir/run/metrics.jsonl"; then
    record zero2 "$n" "$dir/run"
  else  # out of memory, most likely: the error is the result
    err=$({ grep -m1 -i "error\|out of memory" "$dir/log" || echo "no step trained"; } | cut -c1-300 |
          "$py" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))')
    echo "{\"part\": \"zero2\", \"ranks\": $n, \"error\": $err}" | tee -a "$log"
  fi
fi

# A tiny fp32 recipe: per_step_prompts over the ranks, each rank's mini-batch the single rank's;
# from random weights with a warm start of 100 supervised steps, or from the checkpoint `base`.
tiny_recipe() {  # path prompts steps [extra] [base]
  local model="model_config: recipes/tiny_model.json" warm=100
  [ -n "${5:-}" ] && { model="model_dir: $5"; warm=0; }
  cat > "$1" <<YAML
$model
device: $device
tokenizer: builtin:bytes
task: addition
task_digits: 1
train_size: 400
eval_size: 16
seed: 0
sft_steps: $warm
sft_batch_size: 32
sft_learning_rate: 0.002
rewards: math
max_steps: $3
per_step_prompts: $2
num_generations: 4
max_completion_length: 6
learning_rate: 0.001
beta: 0.04
eval_every: 0
save_every: 0
mini_batch_size: 16
recompute_old_logprobs: true
${4:-}
YAML
}

if want equality && [ "$have" -ge 2 ]; then
  # Both runs start from one warm start made on one rank: a warm start on 2 ranks rounds its row
  # sums otherwise, and 100 AdamW steps from random weights grow that to ~1e-3.
  rm -rf "$out/equality-base" "$out/equality-1" "$out/equality-2"
  tiny_recipe "$out/equality-base.yaml" 8 1
  "$grpo" train "$out/equality-base.yaml" --output "$out/equality-base" > "$out/equality-base.log" 2>&1
  tiny_recipe "$out/equality.yaml" 8 3 "" "$PWD/$out/equality-base/checkpoint-0"
  "$grpo" train "$out/equality.yaml" --output "$out/equality-1" > "$out/equality-1.log" 2>&1
  "$grpo" launch --nproc-per-node 2 --master-port 29743 -- "$grpo" train "$out/equality.yaml" \
    --output "$out/equality-2" > "$out/equality-2.log" 2>&1
  "$py" - "$out" "$device" >> "$log" <<'PY'
import json, sys
from safetensors.torch import load_file
out, device = sys.argv[1:3]
one, two = (load_file(f"{out}/equality-{n}/checkpoint-3/model.safetensors") for n in (1, 2))
d = max((one[k] - two[k]).abs().max().item() for k in one)
print(json.dumps({"part": "equality", "ranks": 2, "device": device, "steps": 3, "max_abs_diff": d, "ok": d <= 1e-5}))
PY
  tail -1 "$log"
fi

if want kill && [ "$have" -ge 2 ]; then
  tiny_recipe "$out/kill.yaml" 8 1000 "ddp_timeout: ${KILL_TIMEOUT:-60}"
  "$py" - "$grpo" "$out" >> "$log" <<'PY'
import json, os, signal, subprocess, sys, time
sys.path.insert(0, "scripts/bench")
import ranks_by_hand
grpo, out = sys.argv[1:3]

def rank_pids(launcher):
    kids = subprocess.run(["pgrep", "-P", str(launcher)], capture_output=True, text=True).stdout.split()
    env = lambda pid: open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return {int(next(v for v in env(k) if v.startswith(b"RANK=")).split(b"=")[1]): int(k) for k in kids}

# Under the launcher.
run = out + "/kill-launch"
p = subprocess.Popen([grpo, "launch", "--nproc-per-node", "2", "--master-port", "29744", "--grace-seconds", "10",
                      "--", grpo, "train", out + "/kill.yaml", "--output", run],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
ok = ranks_by_hand.wait_for_step([p], run, 2, 1200)  # then mid-step 3
pids = rank_pids(p.pid)
t0 = time.time()
os.kill(pids[1], signal.SIGKILL)
err = p.communicate(timeout=300)[1]
took = time.time() - t0
left = [q for q in pids.values() if os.path.exists(f"/proc/{q}") and open(f"/proc/{q}/stat").read().split()[2] != "Z"]
line = next((l for l in err.split("\n") if "grpo launch" in l), err.strip()[-300:])
print(json.dumps({"part": "kill", "how": "rank 1 SIGKILL under grpo launch", "seconds_to_end": round(took, 2),
                  "ranks_left": len(left), "exit": p.returncode, "error": line[:300], "ok": ok and not left}))
PY
  # Ranks started by hand: no launcher stops rank 0; the collective's timeout must.
  "$py" scripts/bench/ranks_by_hand.py "$grpo" "$out/kill.yaml" "$out/kill-alone" 29745 >> "$log"
  tail -2 "$log"
fi

if want single; then
  tiny_recipe "$out/single.yaml" 8 3
  rm -rf "$out"/single-plain "$out"/single-z0 "$out"/single-z2
  "$grpo" train "$out/single.yaml" --output "$out/single-plain" > "$out/single-plain.log" 2>&1
  for z in 0 2; do
    "$grpo" launch --nproc-per-node 1 --master-port "2974$((6 + z))" -- "$grpo" train "$out/single.yaml" \
      "zero_stage=$z" --output "$out/single-z$z" > "$out/single-z$z.log" 2>&1 || true
  done
  "$py" - "$out" "$device" >> "$log" <<'PY'
import json, os, sys
from safetensors.torch import load_file
out, device = sys.argv[1:3]
plain = load_file(f"{out}/single-plain/checkpoint-3/model.safetensors")
for z in (0, 2):
    path = f"{out}/single-z{z}/checkpoint-3/model.safetensors"
    if not os.path.exists(path):
        err = open(f"{out}/single-z{z}.log").read().strip().splitlines()
        print(json.dumps({"part": "single", "ranks": 1, "zero_stage": z, "device": device, "ok": False,
                          "error": (err[-1] if err else "no checkpoint-3")[:300]}))
        continue
    one = load_file(path)
    d = max((plain[k] - one[k]).abs().max().item() for k in plain)
    print(json.dumps({"part": "single", "ranks": 1, "zero_stage": z, "device": device, "steps": 3,
                      "max_abs_diff": d, "ok": d <= 1e-5}))
PY
  tail -2 "$log"
fi

"$py" - "$log" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
scal = {r["ranks"]: r for r in rows if r["part"] == "scaling"}
if scal:
    base = scal.get(1)
    print("\n| ranks | rollout s | reward s | train s | step s | tokens/s | speed-up | efficiency | peak allocated GB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sorted(scal):
        r = scal[n]
        total = r["time_rollout"] + r["time_reward"] + r["time_train"]
        sp = r["tokens_per_second"] / base["tokens_per_second"] if base else float("nan")
        print(f"| {n} | {r['time_rollout']:.1f} | {r['time_reward']:.2f} | {r['time_train']:.1f} | {total:.1f} | "
              f"{r['tokens_per_second']:.0f} | {sp:.2f}x | {100 * sp / n:.0f}% | {r.get('memory/peak_allocated_gb', 0):.1f} |")
for r in rows:
    if r["part"] == "zero2":
        if "error" in r:
            print(f"\nzero_stage 2, full fine-tuning, {r['ranks']} ranks: {r['error']}")
        else:
            print(f"\nzero_stage 2, full fine-tuning, {r['ranks']} ranks: step {r['time_rollout'] + r['time_reward'] + r['time_train']:.1f} s "
                  f"(rollout {r['time_rollout']:.1f}, reward {r['time_reward']:.2f}, train {r['time_train']:.1f}); "
                  f"fullest GPU: {r.get('memory/peak_allocated_gb', 0):.1f} GB allocated, {r.get('memory/peak_reserved_gb', 0):.1f} GB reserved")
    elif r["part"] == "equality":
        print(f"\n2 ranks against 1 ({r['device']}, fp32, {r['steps']} steps): max |diff| of the weights {r['max_abs_diff']:.3g} "
              f"({'within' if r['ok'] else 'OVER'} 1e-5)")
    elif r["part"] == "single":
        backend = "NCCL" if r["device"] == "cuda" else "Gloo"
        print(f"\n1 rank under grpo launch ({backend}, zero_stage {r['zero_stage']}) against no launcher: "
              + (f"max |diff| of the weights after {r['steps']} steps {r['max_abs_diff']:.3g} ({'within' if r['ok'] else 'OVER'} 1e-5)"
                 if "max_abs_diff" in r else f"FAILED: {r['error']}"))
    elif r["part"] == "kill":
        print(f"\n{r['how']}: rank 0 ended after {r['seconds_to_end']} s, exit {r['exit']}"
              + (f", {r['ranks_left']} rank(s) left" if "ranks_left" in r else "") + f" ({'ok' if r['ok'] else 'FAILED'}): {r['error']}")
PY

#!/usr/bin/env bash
# The cost of exact_rollout over whole GRPO steps: the built-in recipe (recipes/r1_zero_tiny.yaml,
# a shorter warm start) in bf16, run three ways from the same start: without exact_rollout; with it,
# recomputing the update's values through the batch-invariant forward on every step
# (exact_rollout_check_every 1); with it as by default, taking the engine's values except on check
# steps. Prints per run the mean seconds per step, rollout and update over steps 11.., the largest
# per-token |engine - training| it measured, and whether the two exact runs end with the same
# weights (they must: the engine's values equal the forward's to the bit).
#   scripts/bench_exact_step.sh [cpu|gpu]   (STEPS 100, SFT_STEPS 200)
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-cpu}"
cmake --build "$build" --target grpo >/dev/null
work=bench-out/exact-step
rm -rf "$work"
mkdir -p "$work"
device=$([ "$mode" = gpu ] && echo cuda || echo cpu)
common=(bf16=true device=$device sft_steps=${SFT_STEPS:-200} max_steps=${STEPS:-100} eval_every=0 save_every=0)
for run in ordinary "exact_every_step exact_rollout=true exact_rollout_check_every=1" "exact exact_rollout=true"; do
  set -- $run
  name=$1
  shift
  echo "== $name" >&2
  "$build/bin/grpo" train recipes/r1_zero_tiny.yaml --output "$work/$name" "${common[@]}" "$@" 2>&1 | tr '\r' '\n' | tail -1 >&2
done
"$py" - "$work" <<'PY'
import glob, hashlib, json, os, sys
work = sys.argv[1]
def steps(name):
    return [m for m in map(json.loads, open(os.path.join(work, name, "metrics.jsonl"))) if "time_train" in m]
def weights(name):
    last = sorted(glob.glob(os.path.join(work, name, "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[1]))[-1]
    return hashlib.sha256(open(os.path.join(last, "model.safetensors"), "rb").read()).hexdigest()
labels = {"ordinary": "ordinary bf16", "exact_every_step": "exact_rollout, values recomputed every step",
          "exact": "exact_rollout, the engine's values (default checks)"}
rows = {name: steps(name) for name in labels}
base = None
print("| run | s/step | rollout s | update s | step vs ordinary | steps measuring the drift | max per-token drift |")
print("|---|---|---|---|---|---|---|")
for name, label in labels.items():
    m = rows[name][10:] or rows[name]
    mean = lambda k: sum(x[k] for x in m) / len(m)
    base = base or mean("time_step")
    measured = [x["rollout_logprob_diff/max"] for x in rows[name] if "rollout_logprob_diff/max" in x]
    print(f"| {label} | {mean('time_step'):.3f} | {mean('time_rollout'):.3f} | {mean('time_train'):.3f} | "
          f"{mean('time_step') / base:.2f}x | {len(measured)} of {len(rows[name])} | {max(measured):.3g} |")
same = weights("exact_every_step") == weights("exact")
print(f"\nthe two exact_rollout runs end with {'the same' if same else 'DIFFERENT'} weights")
sys.exit(0 if same else 1)
PY

#!/usr/bin/env bash
# Speculative decoding with a trained MTP module, on the built-in tiny task. First an sft stage
# trains the tiny model (recipes/tiny_model.json with one MTP module) on worked addition solutions
# with mtp_loss_weight, so that the module has learnt to predict two tokens ahead; then the same
# GRPO recipe runs from it plain and with speculative_mtp at each num_speculative_tokens of DRAFTS
# (mtp_loss_weight keeps the module fit as the policy moves). Prints per mode the mean rollout time
# over steps 2.., the tokens sampled, the draft acceptance, the tokens a sequence gets per check
# (1 + drafts x acceptance) and the rollout speed-up, with the mean reward as a sanity check (the
# runs sample different tokens with the same distribution).
#   scripts/bench_speculative.sh [cpu|gpu]
#   (SFT_STEPS 300, STEPS 6, PROMPTS 32, G 8, LENGTH 128, DRAFTS "1 2 3", REUSE 0)
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-cpu}"
cmake --build "$build" --target grpo >/dev/null
work=bench-out/speculative
# REUSE=1 keeps the sft stage of an earlier run.
if [ "${REUSE:-0}" = 1 ] && [ -d "$work/sft" ]; then rm -rf "$work"/plain* "$work"/speculative*; else rm -rf "$work"; fi
mkdir -p "$work"
device=$([ "$mode" = gpu ] && echo cuda || echo cpu)
"$py" - recipes/tiny_model.json "$work/model.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["num_nextn_predict_layers"] = 1
json.dump(c, open(sys.argv[2], "w"))
PY
cat > "$work/sft.yaml" <<YAML
model_config: $work/model.json
tokenizer: builtin:bytes
device: $device
type: sft
task: addition_cot
train_size: 4000
eval_size: 32
max_length: 256
per_device_train_batch_size: 8
num_train_epochs: 10
max_steps: ${SFT_STEPS:-300}
learning_rate: 0.003
mtp_loss_weight: 0.3
save_every: ${SFT_STEPS:-300}
eval_every: 0
seed: 0
YAML
[ -d "$work/sft" ] || "$build/bin/grpo" train "$work/sft.yaml" --output "$work/sft" >"$work/sft.log" 2>&1
ck=$(ls -d "$work"/sft/checkpoint-* | sort -V | tail -1)
drafts=${DRAFTS:-1 2 3}
run() {  # name, speculative_mtp, num_speculative_tokens
  cat > "$work/$1.yaml" <<YAML
model_dir: $ck
tokenizer: builtin:bytes
device: $device
task: addition
rewards: math,format:0.1
train_size: 2048
eval_size: 8
per_step_prompts: ${PROMPTS:-32}
num_generations: ${G:-8}
max_completion_length: ${LENGTH:-128}
learning_rate: 0.0005
mtp_loss_weight: 0.3
speculative_mtp: $2
num_speculative_tokens: $3
max_steps: ${STEPS:-6}
eval_every: 0
save_every: 0
seed: 0
YAML
  "$build/bin/grpo" train "$work/$1.yaml" --output "$work/$1" >"$work/$1.log" 2>&1
}
run plain false 1
for k in $drafts; do run "speculative$k" true "$k"; done
"$py" - "$work" $drafts <<'PY'
import json, os, sys
work = sys.argv[1]
modes = ["plain"] + [f"speculative{k}" for k in sys.argv[2:]]
rows = {}
for mode in modes:
    lines = [json.loads(l) for l in open(os.path.join(work, mode, "metrics.jsonl"))]
    rows[mode] = [x for x in lines if "time_rollout" in x and x["step"] >= 2]
avg = lambda mode, k: sum(x.get(k, 0) for x in rows[mode]) / len(rows[mode])
base = avg("plain", "time_rollout")
print(f"\ntiny model + 1 MTP module, sft with mtp_loss_weight then GRPO ({os.environ.get('PROMPTS', 32)} prompts x {os.environ.get('G', 8)}); steps 2..{rows['plain'][-1]['step']} averaged")
print("| mode | drafts a step | rollout s/step | mean completion length | draft acceptance | tokens per check | rollout speed-up | mtp_loss | reward |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in modes:
    k = int(mode[len("speculative"):]) if mode != "plain" else 0
    acc = avg(mode, "rollout/draft_acceptance")
    per_check = f"{1 + k * acc:.2f}" if k else "1"
    toks = avg(mode, "completions/mean_length")
    print(f"| {mode} | {k or '-'} | {avg(mode, 'time_rollout'):.3f} | {toks:.0f} | {f'{acc:.3f}' if k else '-'} | {per_check} | "
          f"{base / avg(mode, 'time_rollout'):.2f}x | {avg(mode, 'mtp_loss'):.3f} | {avg(mode, 'reward'):.3f} |")
PY

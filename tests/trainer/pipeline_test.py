"""A recipe with stages: an sft stage (packed prompt -> completion training on the built-in addition
task) and a grpo stage that starts from its result (`model_dir: stage:cold_start`). Checks that
the sft stage learns (held-out loss falls), that OUT/pipeline.json records each stage's status,
final checkpoint and key metrics, that the grpo stage starts from the sft result (its base
accuracy is the sft checkpoint's), that a run killed with SIGKILL inside the sft stage and again
inside the grpo stage resumes each time at the right stage and step and ends with the same weights
and losses as an uninterrupted run, and that packing changes nothing but the speed (the first sft
step's loss with and without packing is the same to 1e-6 when one row holds the whole batch).
Then a rejection-sampling stage from the sft result feeding an sft stage of the base (distillation):
its statistics add up, it keeps only right answers, and killed mid-way it resumes to the same data
and the same distilled weights. An sft step under profile_steps writes its trace and table."""
import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_helpers import kill_when as helpers_kill_when  # noqa: E402
from run_helpers import metrics, tensors, train  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--source", required=True)
ap.add_argument("--workdir", required=True)
a = ap.parse_args()
shutil.rmtree(a.workdir, ignore_errors=True)
os.makedirs(a.workdir)

RECIPE = f"""model_config: {a.source}/recipes/tiny_model.json
tokenizer: builtin:bytes
task: addition
train_size: 600
eval_size: 40
rewards: math
seed: 0
stages:
  - name: cold_start
    type: sft
    max_length: 64
    per_device_train_batch_size: 4
    num_train_epochs: 3
    learning_rate: 0.002
    eval_every: 50
    save_every: 10
  - name: reasoning
    model_dir: stage:cold_start
    max_steps: 8
    per_step_prompts: 8
    num_generations: 4
    max_completion_length: 4
    learning_rate: 0.0003
    eval_every: 4
    save_every: 2
"""
recipe = os.path.join(a.workdir, "r.yaml")
open(recipe, "w").write(RECIPE)


def run(out, *extra):
    return train(a.grpo, recipe, out, *extra)


full = os.path.join(a.workdir, "full")
log = run(full)
pipe = json.load(open(os.path.join(full, "pipeline.json")))
names = [(s["name"], s["type"], s["status"]) for s in pipe["stages"]]
if names != [("cold_start", "sft", "done"), ("reasoning", "grpo", "done")]:
    sys.exit(f"pipeline.json stages: {names}")
sft_metrics = metrics(os.path.join(full, "cold_start", "metrics.jsonl"))
before = sft_metrics[0]["eval_loss"]
after = [m["eval_loss"] for m in sft_metrics if "eval_loss" in m][-1]
steps = max(m["step"] for m in sft_metrics)
print(f"sft: {steps} steps (3 epochs of 600 examples packed into rows of 64 tokens, 4 rows per step); "
      f"held-out loss {before:.3f} -> {after:.3f}")
if not after < 0.6 * before:
    sys.exit("the sft stage did not learn")
out0 = pipe["stages"][0]["output"]
if out0 != os.path.join(full, "cold_start", f"checkpoint-{steps}") or abs(pipe["stages"][0]["metrics"]["eval_loss"] - after) > 1e-9:
    sys.exit(f"pipeline.json's sft output or metrics are wrong: {pipe['stages'][0]}")
# The grpo stage starts from the sft result: a one-stage grpo recipe whose model_dir is the sft
# stage's final checkpoint runs the same steps with the same losses.
alone = os.path.join(a.workdir, "alone.yaml")
open(alone, "w").write(RECIPE.split("stages:")[0] + RECIPE.split("- name: reasoning")[1]
                       .replace("model_dir: stage:cold_start", "model_dir: " + out0).replace("\n    ", "\n"))
r = subprocess.run([a.grpo, "train", alone, "--output", os.path.join(a.workdir, "alone")], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(r.stderr[-2000:])
pipe_losses = [m["loss"] for m in metrics(os.path.join(full, "reasoning", "metrics.jsonl")) if "loss" in m]
alone_losses = [m["loss"] for m in metrics(os.path.join(a.workdir, "alone", "metrics.jsonl")) if "loss" in m]
print(f"grpo stage from stage:cold_start and from {os.path.basename(out0)} directly: "
      f"{len(pipe_losses)} equal losses" if pipe_losses == alone_losses else "")
if pipe_losses != alone_losses or not any(pipe_losses):
    sys.exit(f"the grpo stage did not start from the sft result: {pipe_losses} vs {alone_losses}")

# Killed inside the sft stage, then inside the grpo stage: each --resume continues where it stopped.
cut = os.path.join(a.workdir, "cut")


def kill_when(path, step):
    helpers_kill_when(a.grpo, recipe, cut, path, step)


kill_when(os.path.join(cut, "cold_start", "metrics.jsonl"), 33)
state = json.load(open(os.path.join(cut, "pipeline.json")))
if [s["status"] for s in state["stages"]] != ["running", "pending"]:
    sys.exit(f"after the kill in sft: {state}")
kill_when(os.path.join(cut, "reasoning", "metrics.jsonl"), 5)
sft_log = open(os.path.join(cut, "cold_start", "train.log")).read()
import re
resumed = re.findall(r"resumed from \S+checkpoint-(\d+) \(step (\d+)\)", sft_log)
if len(resumed) != 1 or not 30 <= int(resumed[0][1]) < steps:
    sys.exit("the sft stage did not resume from a checkpoint at step 30 or later:\n" + sft_log[-2000:])
run(cut, "--resume")
for stage, final in [("cold_start", f"checkpoint-{steps}"), ("reasoning", "checkpoint-8")]:
    x = tensors(os.path.join(full, stage, final, "model.safetensors"))
    y = tensors(os.path.join(cut, stage, final, "model.safetensors"))
    if x != y:
        diff = [k for k in x if x[k] != y.get(k)]
        sys.exit(f"{stage}: resumed weights differ from the uninterrupted run's in {len(diff)} tensors")
ref = {m["step"]: m["loss"] for m in metrics(os.path.join(full, "reasoning", "metrics.jsonl")) if "loss" in m}
got = {m["step"]: m["loss"] for m in metrics(os.path.join(cut, "reasoning", "metrics.jsonl")) if "loss" in m}
if ref != got:
    sys.exit(f"grpo losses differ after resume: {ref} vs {got}")
if json.load(open(os.path.join(cut, "pipeline.json")))["stages"] != [
        dict(s, output=s["output"].replace(full, cut)) for s in pipe["stages"]]:
    sys.exit("the resumed pipeline.json differs from the uninterrupted one")
print(f"killed inside the sft stage (resumed at step {resumed[0][1]}) and inside the grpo stage: final weights of "
      "both stages bit-identical to the uninterrupted run, grpo losses equal")

# Rejection sampling from the sft result, then sft of the base on what it kept ("distill"). Killed
# inside the rejection-sampling stage, --resume goes on after the last finished chunk of prompts:
# the dataset, its statistics and the distilled weights equal an uninterrupted run's.
RS = f"""model_config: {a.source}/recipes/tiny_model.json
tokenizer: builtin:bytes
task: addition
train_size: 600
eval_size: 40
rewards: math
seed: 0
stages:
  - name: rs
    type: rejection_sampling
    model_dir: {out0}
    num_samples: 4
    max_prompts: 400
    per_step_prompts: 20
    max_completion_length: 6
    temperature: 1.0
  - name: distill
    type: sft
    train_file: stage:rs
    max_length: 64
    packing: false
    num_train_epochs: 3
    per_device_train_batch_size: 1
    learning_rate: 0.002
    eval_every: 0
    save_every: 5
"""
rs_recipe = os.path.join(a.workdir, "rs.yaml")
open(rs_recipe, "w").write(RS)
rs_full = os.path.join(a.workdir, "rs_full")
r = subprocess.run([a.grpo, "train", rs_recipe, "--output", rs_full], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(r.stderr[-2000:])
stats = json.load(open(os.path.join(rs_full, "rs", "stats.json")))
kept_lines = [json.loads(l) for l in open(os.path.join(rs_full, "rs", "data.jsonl"))]
rejected = sum(stats["rejected"].values())
print(f"rejection sampling: kept {stats['kept']} of {stats['samples']} samples from {stats['prompts']} prompts, "
      f"rejected {stats['rejected']}, kept per prompt {stats['kept_per_prompt']}")
if not (stats["prompts"] == 400 and stats["samples"] == 1600 and stats["kept"] == len(kept_lines) > 0
        and stats["kept"] + rejected == 1600 and sum(stats["kept_per_prompt"].values()) == 400):
    sys.exit("rejection-sampling statistics do not add up")
for line in kept_lines:  # every kept sample is a right answer to its prompt
    x, y = line["prompt"].rstrip("=").split("+")
    if line["completion"].strip() != str(int(x) + int(y)) or line["answer"] != str(int(x) + int(y)):
        sys.exit(f"a wrong sample was kept: {line}")
rs_cut = os.path.join(a.workdir, "rs_cut")
p = subprocess.Popen([a.grpo, "train", rs_recipe, "--output", rs_cut], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
progress = os.path.join(rs_cut, "rs", "progress.json")
deadline = time.time() + 300
while time.time() < deadline and p.poll() is None:
    try:
        if json.load(open(progress))["prompts_done"] >= 120:
            break
    except (OSError, ValueError):
        pass
    time.sleep(0.005)
p.send_signal(signal.SIGKILL)
p.wait()
cut_at = json.load(open(progress))["prompts_done"]
if cut_at >= 400:
    sys.exit("the rejection-sampling stage finished before it could be killed")
r = subprocess.run([a.grpo, "train", rs_recipe, "--output", rs_cut, "--resume"], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(r.stderr[-2000:])
same = (open(os.path.join(rs_full, "rs", "data.jsonl")).read() == open(os.path.join(rs_cut, "rs", "data.jsonl")).read()
        and json.load(open(os.path.join(rs_cut, "rs", "stats.json"))) == stats)
last = max(int(d.split("-")[1]) for d in os.listdir(os.path.join(rs_full, "distill")) if d.startswith("checkpoint-"))
wx = tensors(os.path.join(rs_full, "distill", f"checkpoint-{last}", "model.safetensors"))
wy = tensors(os.path.join(rs_cut, "distill", f"checkpoint-{last}", "model.safetensors"))
print(f"killed after {cut_at} of 400 prompts and resumed: same dataset and statistics {same}, "
      f"distilled weights identical {wx == wy}")
if not same or wx != wy:
    sys.exit("the resumed rejection-sampling pipeline differs from the uninterrupted one")

# Killed inside the later sft stage (after the rejection-sampling stage finished): --resume goes on
# from its last checkpoint, not from its start, to the same weights.
rs_cut2 = os.path.join(a.workdir, "rs_cut2")
p = subprocess.Popen([a.grpo, "train", rs_recipe, "--output", rs_cut2], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
distill_metrics = os.path.join(rs_cut2, "distill", "metrics.jsonl")
deadline = time.time() + 300
while time.time() < deadline and p.poll() is None:
    if os.path.exists(distill_metrics) and any(m.get("step", 0) >= 12 for m in metrics(distill_metrics)):
        break
    time.sleep(0.005)
if p.poll() is not None:
    sys.exit("the distill stage finished before it could be killed")
p.send_signal(signal.SIGKILL)
p.wait()
r = subprocess.run([a.grpo, "train", rs_recipe, "--output", rs_cut2, "--resume"], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(r.stderr[-2000:])
resumed_line = [l for l in open(os.path.join(rs_cut2, "distill", "train.log")) if "resumed from" in l]
wz = tensors(os.path.join(rs_cut2, "distill", f"checkpoint-{last}", "model.safetensors"))
print(f"killed inside the later sft stage and resumed ({resumed_line[0].split('resumed ')[1].strip() if resumed_line else 'no resume'}): "
      f"distilled weights identical {wz == wx}")
if not resumed_line or wz != wx:
    sys.exit("the later sft stage did not resume to the uninterrupted run's weights")

# Packing changes nothing but the speed: one step over the same 4 examples, packed into one row
# and one example per row, has the same loss.
one = os.path.join(a.workdir, "one.yaml")
for packing in ["true", "false"]:
    open(one, "w").write(f"""model_config: {a.source}/recipes/tiny_model.json
tokenizer: builtin:bytes
task: addition
train_size: 4
eval_size: 4
type: sft
packing: {packing}
max_length: 256
per_device_train_batch_size: 4
max_steps: 1
eval_every: 0
shuffle: false
profile_steps: [1]
""")
    out = os.path.join(a.workdir, f"one_{packing}")
    subprocess.run([a.grpo, "train", one, "--output", out], check=True, capture_output=True)
    globals()[f"loss_{packing}"] = metrics(os.path.join(out, "metrics.jsonl"))[-1]["loss"]
print(f"first step loss: packed {loss_true:.9f}, unpacked {loss_false:.9f}")
if abs(loss_true - loss_false) > 1e-6:
    sys.exit("packing changes the loss")
# profile_steps in an sft stage: the step's training (forward, backward, AdamW) traced and tabled.
prof = os.path.join(a.workdir, "one_true", "profile")
files = sorted(os.listdir(prof)) if os.path.isdir(prof) else []
md = open(os.path.join(prof, "step-1.md")).read() if "step-1.md" in files else ""
names = {e.get("name", "") for e in json.load(open(os.path.join(prof, "step-1-train.json")))["traceEvents"]} \
    if "step-1-train.json" in files else set()
print(f"sft profile_steps [1]: {files}; {sum('Backward' in n for n in names)} backward operators in the trace")
if files != ["step-1-train.json", "step-1.md"] or "## train:" not in md or "aten::mm" not in md \
        or not any("Backward" in n for n in names) or not any("adamw" in n.lower() or "Optimizer" in n or "aten::addcdiv" in n for n in names):
    sys.exit("the sft stage's profiled step did not write its trace and table")
print("ok")

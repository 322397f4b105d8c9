"""The reward_model stage and the reward `reward_model`, end to end on the built-in tiny model:
- a reward_model stage trained on the built-in preference pairs (worked solution against a wrong
  sum, a bare answer, rambling) ranks held-out pairs well above chance;
- its checkpoint loads in transformers' AutoModelForSequenceClassification, whose scores (batched,
  right-padded with pad_token_id) equal grpo's (`grpo reward --name reward_model`) to 1e-4 in fp32;
- killed with SIGKILL mid-stage and resumed, it ends with the same weights as an uninterrupted run;
- a grpo stage scores general prompts by the trained reward model (rewards_by_source) and math
  prompts by rules, and `grpo reward-worker --reward-model DIR` serves the same scores over gRPC."""
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
from run_helpers import metrics, tensors  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--source", required=True)
ap.add_argument("--workdir", required=True)
a = ap.parse_args()
shutil.rmtree(a.workdir, ignore_errors=True)
os.makedirs(a.workdir)

RECIPE = f"""model_config: {a.source}/recipes/tiny_model.json
tokenizer: builtin:bytes
task: addition_cot
train_size: 600
eval_size: 64
seed: 0
stages:
  - name: rm
    type: reward_model
    max_length: 128
    per_device_train_batch_size: 8
    max_steps: 60
    learning_rate: 0.001
    eval_every: 20
    save_every: 10
  - name: final
    model_config: {a.source}/recipes/tiny_model.json
    task: addition
    general_share: 0.5
    rewards: math
    rewards_by_source: {{general: reward_model}}
    reward_model: stage:rm
    max_steps: 2
    per_step_prompts: 8
    num_generations: 2
    max_completion_length: 8
    save_every: 2
"""
recipe = os.path.join(a.workdir, "r.yaml")
open(recipe, "w").write(RECIPE)


full = os.path.join(a.workdir, "full")
r = subprocess.run([a.grpo, "train", recipe, "--output", full], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(f"grpo train failed:\n{r.stderr[-3000:]}")
pipe = json.load(open(os.path.join(full, "pipeline.json")))
m = metrics(os.path.join(full, "rm", "metrics.jsonl"))
acc0 = m[0]["eval_accuracy"]
acc = [x["eval_accuracy"] for x in m if "eval_accuracy" in x][-1]
print(f"reward model: held-out accuracy {acc0:.3f} before training, {acc:.3f} after 60 steps "
      f"(pipeline.json: {pipe['stages'][0]['metrics']})")
if not acc >= 0.7:
    sys.exit("the reward model did not learn to rank the pairs")
rm_dir = pipe["stages"][0]["output"]
final = metrics(os.path.join(full, "final", "metrics.jsonl"))
comps = [k for k in final[-1] if "reward_model" in k]
print(f"final stage: {len(final)} metric lines, reward-model columns: {comps}")
if not comps:
    sys.exit(f"the final stage logged no reward_model component: {final[-1]}")

# transformers scores the checkpoint as grpo does.
# The first is the preferred style (a worked solution that checks its sum), the others worse answers.
items = [{"prompt": "12+30=",
          "completion": "<think>\n2+0=2, write 2\n1+3=4, write 4\ncheck: 42-30=12\n</think>\n<answer>\n42\n</answer>"},
         {"prompt": "12+30=", "completion": "42"},
         {"prompt": "7+5=", "completion": "<think>\nhmm, let me think again\n</think>\n<answer>\n13\n</answer>"},
         {"prompt": "99+1=", "completion": ""}]
inp = os.path.join(a.workdir, "items.jsonl")
open(inp, "w").write("".join(json.dumps(i) + "\n" for i in items))
out = os.path.join(a.workdir, "scores.jsonl")
opts = json.dumps({"reward_model": {"path": rm_dir}})
r = subprocess.run([a.grpo, "reward", "--name", "reward_model", "--options", opts, "--input", inp, "--output", out],
                   capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(f"grpo reward --name reward_model: {r.stderr}")
ours = [json.loads(l)["reward"] for l in open(out)]

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(rm_dir, "tokenizer.json"))
model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
seqs = [tok(i["prompt"])["input_ids"] + tok(i["completion"], add_special_tokens=False)["input_ids"] for i in items]
pad = model.config.pad_token_id
T = max(len(s) for s in seqs)
ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])
with torch.no_grad():
    ref = model(input_ids=ids, attention_mask=(ids != pad).long()).logits[:, 0].tolist()
diff = max(abs(x - y) for x, y in zip(ours, ref))
print(f"transformers AutoModelForSequenceClassification vs grpo: {[round(x, 4) for x in ref]} vs "
      f"{[round(x, 4) for x in ours]}, max |diff| {diff:.2e}")
if diff > 1e-4:
    sys.exit("scores differ")
if not (ours[0] > ours[1] and ours[0] > ours[2]):
    sys.exit("the trained model does not prefer the checked worked solution")

# The reward worker serves the same scores.
port_file = os.path.join(a.workdir, "port")
w = subprocess.Popen([a.grpo, "reward-worker", "--reward-model", rm_dir, "--port", "0", "--port-file", port_file],
                     stderr=subprocess.PIPE, text=True)
try:
    deadline = time.time() + 60
    while not os.path.exists(port_file) and time.time() < deadline and w.poll() is None:
        time.sleep(0.05)
    if not os.path.exists(port_file):
        sys.exit(f"reward-worker did not start: {w.stderr.read() if w.poll() is not None else 'timeout'}")
    port = open(port_file).read().strip()
    out2 = os.path.join(a.workdir, "scores_worker.jsonl")
    r = subprocess.run([a.grpo, "reward", "--name", "reward_model", "--workers", f"127.0.0.1:{port}", "--input", inp,
                        "--output", out2], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"grpo reward --workers: {r.stderr}")
    served = [json.loads(l)["reward"] for l in open(out2)]
    if max(abs(x - y) for x, y in zip(served, ours)) > 1e-6:
        sys.exit(f"the worker's scores {served} differ from in-process {ours}")
    print("reward-worker --reward-model serves the same scores")
finally:
    w.send_signal(signal.SIGTERM)
    w.wait()

# Killed inside the reward-model stage, resumed: the same weights as the uninterrupted run.
cut = os.path.join(a.workdir, "cut")
one = os.path.join(a.workdir, "one.yaml")
open(one, "w").write(RECIPE.split("  - name: final")[0])
p = subprocess.Popen([a.grpo, "train", one, "--output", cut], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
path = os.path.join(cut, "checkpoint-20")  # one stage: its directory is the output
deadline = time.time() + 300
while time.time() < deadline and p.poll() is None:
    if os.path.exists(path):
        break
    time.sleep(0.002)
time.sleep(0.3)  # a few steps past the checkpoint
if p.poll() is not None:
    sys.exit("the run ended before it could be killed")
p.send_signal(signal.SIGKILL)
p.wait()
r = subprocess.run([a.grpo, "train", one, "--output", cut, "--resume"], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(f"resume failed: {r.stderr[-2000:]}")
a_t = tensors(os.path.join(rm_dir, "model.safetensors"))
b_t = tensors(os.path.join(cut, "checkpoint-60", "model.safetensors"))
if "resumed from" not in open(os.path.join(cut, "train.log")).read():
    sys.exit("the second run did not resume")
if a_t.keys() != b_t.keys() or any(a_t[k] != b_t[k] for k in a_t):
    sys.exit("the resumed reward model differs from the uninterrupted one")
print(f"killed after step 20 and resumed: all {len(a_t)} tensors (score.weight included) bit-identical")

# A reward model from a rejection-sampling stage's pairs: a briefly trained policy is right on some
# samples and wrong on others; each pair puts a kept (right) sample above a dropped one of the same
# prompt, and the reward_model stage reads them with train_file: stage:NAME.
PAIRS = f"""model_config: {a.source}/recipes/tiny_model.json
tokenizer: builtin:bytes
task_digits: 1
train_size: 60
eval_size: 8
seed: 0
stages:
  - name: sft
    type: sft
    task: addition_cot
    max_length: 128
    per_device_train_batch_size: 8
    num_train_epochs: 25
    learning_rate: 0.003
  - name: rejection
    type: rejection_sampling
    model_dir: stage:sft
    task: addition
    rewards: math
    num_samples: 4
    per_step_prompts: 30
    max_completion_length: 64
    temperature: 1.0
  - name: rm_pairs
    type: reward_model
    model_dir: stage:sft
    train_file: stage:rejection
    max_length: 128
    per_device_train_batch_size: 4
    max_steps: 4
"""
pr = os.path.join(a.workdir, "pairs.yaml")
open(pr, "w").write(PAIRS)
pout = os.path.join(a.workdir, "pairs")
r = subprocess.run([a.grpo, "train", pr, "--output", pout], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(f"rejection -> reward_model pipeline failed:\n{r.stderr[-3000:]}")
stats = json.load(open(os.path.join(pout, "rejection", "stats.json")))
pairs = [json.loads(l) for l in open(os.path.join(pout, "rejection", "pairs.jsonl"))]
quality = {"incorrect", "truncated", "too_short", "too_long", "language", "repeated_ngrams", "repeated_paragraph"}
kept = {}
for line in open(os.path.join(pout, "rejection", "data.jsonl")):
    k = json.loads(line)
    kept.setdefault(k["prompt"], set()).add(k["completion"])
# Each chosen is a kept sample of its prompt; each rejected a different sample, dropped for its quality.
bad = [p for p in pairs if p["chosen"] not in kept.get(p["prompt"], set()) or p["chosen"] == p["rejected"]
       or not (p["rejected_because"] in quality or p["rejected_because"].startswith("reward:"))]
trained = [json.loads(l) for l in open(os.path.join(pout, "rm_pairs", "metrics.jsonl"))]
print(f"rejection stage: {stats['kept']} kept of {stats['samples']}, {stats['pairs']} pairs ({len(pairs)} lines); "
      f"reward model trained {max(m['step'] for m in trained)} steps on them")
if not pairs or len(pairs) != stats["pairs"] or len(pairs) > stats["kept"] or bad:
    sys.exit(f"preference pairs wrong: {len(pairs)} lines, {len(bad)} bad, first bad {bad[:1]}")
print("PASS")

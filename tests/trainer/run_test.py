"""What a practitioner expects of a run, on CPU with the tiny model:
- checkpoints are complete Hugging Face directories: transformers' AutoTokenizer and
  AutoModelForCausalLM load one, its tokenizer encodes as grpo's does and its log-probs equal
  `grpo logprobs` (1e-4); generation_config.json names the eos; no auto_map; save_bf16 writes a bf16
  copy that loads too; save_total_limit keeps the newest checkpoints (and checkpoint-0);
- a run into an output directory that holds a run is refused without --resume;
- TensorBoard shows the scalars, a histogram of each step's rewards and sample completions as text;
- metrics carry TRL's names (reward, reward_std, rewards/<name>/mean, kl, entropy, grad_norm,
  frac_reward_zero_std, completions/*, clip_ratio/*, num_tokens) and train.log has the console lines
  with timestamps;
- key=value overrides on the command line reach the run;
- profile_steps: the step named runs under the profiler and writes Chrome traces of its rollout and
  update and a table of where their time went; the other steps write nothing;
- dataset columns other than prompt/answer reach the rewards as metadata (the example plugin's
  `keywords` reward reads them, loaded through reward_plugins);
- a reward spec that no worker can serve stops the run before any training, naming the keys."""
import json
import os
import re
import subprocess
import sys

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_helpers import Checks, test_args  # noqa: E402

a = test_args("--plugin")
check = Checks()


BASE = f"""model_config: {a.source}/recipes/tiny_model.json
task: addition
task_digits: 1
train_size: 60
eval_size: 8
sft_steps: 10
per_step_prompts: 4
num_generations: 4
max_completion_length: 4
learning_rate: 0.0005
beta: 0.02
eval_every: 0
"""


def recipe(name, body=""):
    path = os.path.join(a.workdir, name + ".yaml")
    open(path, "w").write(BASE + body)
    return path


def grpo_train(path, out, *extra):
    return subprocess.run([a.grpo, "train", path, "--output", out, *extra], capture_output=True, text=True)


# --- a run with checkpoints every step, two kept, a bf16 export, and an override
out = os.path.join(a.workdir, "run")
r = grpo_train(recipe("run", "max_steps: 9\nsave_every: 1\nsave_total_limit: 2\nsave_bf16: true\nprofile_steps: [3]\n"),
               out, "max_steps=4", "eval_every=2")
if r.returncode != 0:
    sys.exit(f"grpo train failed:\n{r.stderr}")
ckpts = sorted(d for d in os.listdir(out) if d.startswith("checkpoint-"))
check(ckpts == ["checkpoint-0", "checkpoint-3", "checkpoint-4"],
      f"max_steps=4 override and save_total_limit 2: {ckpts} (checkpoint-0 kept)")

rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
steps = [m for m in rows if "loss" in m]
names = {"reward", "reward_std", "rewards/math/mean", "kl", "entropy", "grad_norm", "learning_rate",
         "frac_reward_zero_std", "completions/mean_length", "completions/max_length", "completions/clipped_ratio",
         "clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean", "num_tokens"}
missing = names - set(steps[-1]) if steps else names
check(not missing, f"TRL metric names present (missing: {sorted(missing)})")
tokens = [m["num_tokens"] for m in steps]
check(len(steps) == 4 and all(x < y for x, y in zip(tokens, tokens[1:])) and steps[0]["entropy"] > 0,
      f"4 steps, num_tokens a running total {tokens}, entropy {steps[0]['entropy']:.3f} > 0")
log = open(os.path.join(out, "train.log")).read().splitlines()
stamped = [l for l in log if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", l)]
check(len(stamped) == len(log) and any("done, 4 steps" in l for l in log) and any("ETA" in l for l in log),
      f"train.log: {len(log)} timestamped lines with the progress (ETA) and the end")

# TensorBoard reads the event file: scalars, the reward histogram, the completions as text.
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

acc = EventAccumulator(out, size_guidance={"tensors": 0, "histograms": 0, "scalars": 0})
acc.Reload()
tags = acc.Tags()
texts = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("completions")] if "completions" in tags["tensors"] else []
hist = acc.Histograms("rewards") if "rewards" in tags["histograms"] else []
check(len(acc.Scalars("reward")) == 4 and len(hist) == 4 and hist[0].histogram_value.num == 16
      and len(texts) == 2 and "**completion**" in texts[0],
      f"TensorBoard: {len(acc.Scalars('reward'))} reward points, {len(hist)} reward histograms of "
      f"{hist[0].histogram_value.num if hist else 0:.0f} samples, {len(texts)} completions texts")

# profile_steps: [3]: step 3's rollout and update traced, and tabled; no other step.
prof = os.path.join(out, "profile")
files = sorted(os.listdir(prof)) if os.path.isdir(prof) else []
check(files == ["step-3-rollout.json", "step-3-update.json", "step-3.md"], f"profile/ holds step 3's files only: {files}")
if files:
    def ops(name):
        events = json.load(open(os.path.join(prof, name)))["traceEvents"]
        return {e.get("name", "") for e in events}
    rollout_ops, update_ops = ops("step-3-rollout.json"), ops("step-3-update.json")
    backward = [n for n in update_ops if "Backward" in n]
    check(any(n in rollout_ops for n in ("aten::mm", "aten::addmm", "aten::bmm")) and backward
          and not any("Backward" in n for n in rollout_ops),
          f"the traces: {len(rollout_ops)} operators in the rollout's (no backward), {len(update_ops)} in the "
          f"update's, {len(backward)} of them backward ({sorted(backward)[:2]})")
    md = open(os.path.join(prof, "step-3.md")).read()
    sections = re.findall(r"^## (\w+): ([0-9.]+) s wall", md, re.M)
    rows = [l for l in md.splitlines() if re.match(r"\| aten::\w+ \| \d+ \| [0-9.]+ \| [0-9.]+% \|$", l)]
    shares = [float(l.split("|")[4].strip().rstrip("%")) for l in rows]
    check([name for name, _ in sections] == ["rollout", "update"] and all(float(t) > 0 for _, t in sections)
          and len(rows) >= 10 and sum(shares) <= 200.5,
          f"step-3.md: sections {sections}, {len(rows)} operator rows, their shares within each phase's 100%")
    check(any("step 3 ran under the profiler" in l for l in log), "train.log names the profiled step")

r = grpo_train(recipe("run"), out)
check(r.returncode != 0 and "--resume" in r.stderr and out in r.stderr,
      f"a second run into {os.path.basename(out)}/ is refused: {r.stderr.strip()[:140]}")

# --- the checkpoint in transformers
ck = os.path.join(out, "checkpoint-4")
config = json.load(open(os.path.join(ck, "config.json")))
gen = json.load(open(os.path.join(ck, "generation_config.json")))
check("auto_map" not in config and gen.get("eos_token_id") == 257 and gen.get("bos_token_id") == 256,
      f"config.json without auto_map; generation_config.json eos {gen.get('eos_token_id')}, bos {gen.get('bos_token_id')}")
tok = AutoTokenizer.from_pretrained(ck)
text = "7+8=15 \u00e9"
ids = tok(text, add_special_tokens=False)["input_ids"]
check(ids == list(text.encode()) and tok.eos_token == "</s>" and tok.decode(ids) == text,
      f"AutoTokenizer loads the built-in byte tokenizer: {ids[:6]}... = the UTF-8 bytes, eos {tok.eos_token}")

pairs = [{"prompt_ids": [256] + list(f"{i}+{j}=".encode()), "completion_ids": list(str(i + j).encode()) + [257]}
         for i, j in [(1, 2), (3, 4), (9, 9), (0, 5)]]
inp, outp = os.path.join(a.workdir, "pairs.jsonl"), os.path.join(a.workdir, "logprobs.jsonl")
open(inp, "w").writelines(json.dumps(p) + "\n" for p in pairs)
subprocess.run([a.grpo, "logprobs", "--model", ck, "--input", inp, "--output", outp], check=True, capture_output=True)
ours = [json.loads(l)["logprobs"] for l in open(outp)]
worst = 0.0
for bf16 in (False, True):
    model = AutoModelForCausalLM.from_pretrained(os.path.join(ck, "bf16") if bf16 else ck).eval()
    if bf16:
        with safe_open(os.path.join(ck, "bf16", "model.safetensors"), "pt") as f:
            dtypes = {str(f.get_tensor(n).dtype) for n in f.keys()}
        check(torch.bfloat16 in {model.dtype} or "torch.bfloat16" in dtypes,
              f"save_bf16: checkpoint-4/bf16 holds {sorted(dtypes)} and loads in transformers")
        continue
    with torch.no_grad():
        for p, lp in zip(pairs, ours):
            full = torch.tensor([p["prompt_ids"] + p["completion_ids"]])
            logp = torch.log_softmax(model(full).logits[0].float(), -1)
            P = len(p["prompt_ids"])
            ref = [logp[P - 1 + k, t].item() for k, t in enumerate(p["completion_ids"])]
            worst = max(worst, max(abs(x - y) for x, y in zip(lp, ref)))
check(worst < 1e-4, f"AutoModelForCausalLM on checkpoint-4: log-probs equal grpo's within {worst:.1e}")

# --- dataset columns reach the rewards as metadata (the keywords reward throws without them)
data = os.path.join(a.workdir, "kw.jsonl")
with open(data, "w") as f:
    for i in range(20):
        f.write(json.dumps({"prompt": f"{i % 10}+1=", "answer": str(i % 10 + 1), "keywords": ["1", "2", "3"]}) + "\n")
kw = recipe("keywords", f"max_steps: 2\nsave_every: 0\nrewards: keywords\nreward_plugins: [{a.plugin}]\n"
                        f"task: jsonl\ntrain_file: {data}\n")
body = open(kw).read().replace("task: addition\n", "").replace("sft_steps: 10\n", "")  # straight to GRPO
open(kw, "w").write(body)
r = grpo_train(kw, os.path.join(a.workdir, "keywords"))
kw_rows = [json.loads(l) for l in open(os.path.join(a.workdir, "keywords", "metrics.jsonl"))] if r.returncode == 0 else []
check(r.returncode == 0 and any("rewards/keywords/mean" in m and m["reward_errors"] == 0 for m in kw_rows),
      "a JSONL column (keywords) reaches a plugin reward as metadata: " +
      (f"rewards/keywords/mean {kw_rows[-1].get('rewards/keywords/mean')}" if kw_rows else r.stderr.strip()[-200:]))

# --- no worker serves the spec: refused before any training
bad = recipe("bad_worker", "max_steps: 2\nreward_workers: 127.0.0.1:9\n")
r = grpo_train(bad, os.path.join(a.workdir, "bad_worker"))
check(r.returncode != 0 and "reward_workers" in r.stderr and "warm start" not in r.stderr,
      f"an unreachable reward worker stops the run before the warm start: {r.stderr.strip()[:160]}")

check.finish()

"""`grpo eval` as a user runs it, on a tiny checkpoint that one short sft run writes (with its
tokenizer): the summary's pass@1, pass@k and mean reward equal what the samples file says
(recomputed here with math.comb), every sample is scored by the math reward (correct exactly when
its completion is the reference), the same seed draws the same samples, problems past the context
count as wrong and are named, and bad arguments are clear errors."""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--source", required=True)
ap.add_argument("--workdir", required=True)
a = ap.parse_args()
shutil.rmtree(a.workdir, ignore_errors=True)
os.makedirs(a.workdir)

recipe = os.path.join(a.workdir, "sft.yaml")
open(recipe, "w").write(f"""model_config: {a.source}/recipes/tiny_model.json
tokenizer: builtin:bytes
task: addition
train_size: 2000
eval_size: 10
type: sft
max_length: 64
per_device_train_batch_size: 4
num_train_epochs: 1
learning_rate: 0.002
eval_every: 0
""")
subprocess.run([a.grpo, "train", recipe, "--output", os.path.join(a.workdir, "run")], check=True, capture_output=True)
model = os.path.join(a.workdir, "run", open(os.path.join(a.workdir, "run", "latest")).read().strip())

bench = os.path.join(a.workdir, "add.jsonl")
with open(bench, "w") as f:
    for x in range(10, 40):
        f.write(json.dumps({"prompt": f"{x}+{x + 7}=", "answer": str(2 * x + 7)}) + "\n")
    f.write(json.dumps({"prompt": "9" * 300 + "+1=", "answer": "1" + "0" * 300}) + "\n")  # past the 256-token context
summary_path, samples_path = os.path.join(a.workdir, "summary.json"), os.path.join(a.workdir, "samples.jsonl")


def evaluate(path):
    r = subprocess.run([a.grpo, "eval", "--model", model, "--benchmark", path, "--prompt-format", "plain", "-n", "8",
                        "-k", "4", "--temperature", "1.0", "--max-new-tokens", "6", "--seed", "3", "--output",
                        summary_path, "--samples-output", samples_path], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr)
    return r, json.load(open(summary_path)), [json.loads(l) for l in open(samples_path)]


# A tiny model rarely gets a sum right; so the answers of a second benchmark are the model's own
# first samples where those are numbers. The same seed draws the same samples again, so each of
# those problems has at least one correct sample, and the scoring can be checked end to end.
r, s, rows = evaluate(bench)
answers = {}
for row in rows:
    if row["sample"] == 0 and row["completion"].strip().isdigit():
        answers[row["problem"]] = row["completion"].strip()
own = os.path.join(a.workdir, "own.jsonl")
with open(own, "w") as f:
    for i, line in enumerate(open(bench)):
        p = json.loads(line)
        f.write(json.dumps({"prompt": p["prompt"], "answer": answers.get(i, p["answer"])}) + "\n")
r, s, rows2 = evaluate(own)
print(r.stdout.strip())
if [x["completion"] for x in rows2] != [x["completion"] for x in rows]:
    sys.exit("the same seed did not draw the same samples")
if "1 problems leave no room in the model's context" not in r.stderr or "own.jsonl:31" not in r.stderr:
    sys.exit("the problem past the context was not named: " + r.stderr)
if len(rows2) != 31 * 8 or s["problems"] != 31 or s["n"] != 8:
    sys.exit(f"expected 31 x 8 samples, got {len(rows2)}; summary {s}")
truth = [json.loads(l)["answer"] for l in open(own)]
correct = {}
for row in rows2:
    x = row["problem"]
    ok = x < 30 and row["completion"].strip() == truth[x]
    if row["correct"] != ok or row["correct"] != (row["reward"] == 1.0):
        sys.exit(f"sample scored wrongly: {row} (answer {truth[x]})")
    correct[x] = correct.get(x, 0) + row["correct"]


def pass_at(n, c, k):
    return 1.0 if n - c < k else 1 - math.comb(n - c, k) / math.comb(n, k)


p1 = sum(pass_at(8, c, 1) for c in correct.values()) / 31
p4 = sum(pass_at(8, c, 4) for c in correct.values()) / 31
mean = sum(row["reward"] for row in rows2) / len(rows2)
print(f"recomputed from the samples: pass@1 {p1:.4f}, pass@4 {p4:.4f}, mean reward {mean:.4f}; "
      f"{len(answers)} problems answered with a number by their first sample")
if abs(s["pass@1"] - p1) > 1e-12 or abs(s["pass@4"] - p4) > 1e-12 or abs(s["mean_reward"] - mean) > 1e-12:
    sys.exit(f"summary disagrees with the samples: {s}")
if not (len(answers) >= 10 and 0 < p1 < p4):
    sys.exit(f"expected numeric first samples and 0 < pass@1 < pass@4, got {len(answers)}, {p1}, {p4}")

for args, needle in [(["-n", "2", "-k", "3"], "-k must be in [1, n]"),
                     (["--prompt-format", "chat"], "chat template"),
                     (["--benchmark", "gsm9k"], "expected gsm8k, math500, humaneval, mbpp or a FILE.jsonl")]:
    cmd = [a.grpo, "eval", "--model", model] + (args if "--benchmark" in args else ["--benchmark", bench] + args)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == 0 or needle not in r.stderr:
        sys.exit(f"{args}: expected an error with '{needle}', got: {r.stderr}")
print("ok")

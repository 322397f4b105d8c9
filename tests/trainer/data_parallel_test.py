#!/usr/bin/env python3
"""Data-parallel training over c10d/Gloo on CPU, two ranks under `grpo launch` (fp32, tiny model):
- 2 ranks x 4 prompts give the same weights after 3 steps as 1 rank x 8 prompts, for loss_type grpo
  and dapo and zero_stage 0, 1 and 2 (max |diff| <= 1e-6; the ranks' mini-batches are the single
  rank's, so it is exact), with the same per-step loss, reward and KL in metrics.jsonl (rewards vary
  within groups: the advantages are not zero);
- killed (SIGKILL to the launcher: every rank dies) after step 2 and resumed with --resume on 2
  ranks, the job ends with the uninterrupted run's weights, bit for bit, with zero_stage 0 and 2
  (each rank's share of the AdamW state in its own file);
- with bf16 compute and zero_stage 1 and 2 (each rank keeping only its own share of the fp32
  master weights) 2 ranks again equal 1 rank, within 1e-6, and a killed zero_stage 2 bf16 job
  resumes to the same weights;
- dapo with dynamic sampling on 2 ranks keeps the same groups per step and ends at the same
  weights as 1 rank (within 1e-4: the ranks' mini-batches differ from the single rank's, so
  rounding differs; refills happen);
- a recipe of stages (sft, rejection sampling, sft on its data, reward model, grpo) on 2 ranks
  with half the per-device batch gives each stage the 1-rank result (weights within 1e-6, the
  same rejection-sampling data; the grpo stage within 1e-4, as it starts from the rounding
  differences of the stages before);
- a grpo stage's warm start (sft_steps) on 2 ranks, each step's rows split over them, gives the
  1-rank weights (within 2e-5: the ranks' passes are not the single rank's) and logged losses;
- the gradient exchange overlapped with the backward pass (the default) in small buckets, and not
  overlapped, gives the same weights (perf/grad_comm_overlap: most bytes leave during backward);
- sft and reward_model stages with zero_stage 1 and 2, fp32 and bf16 (each rank keeping its own
  share of the AdamW state, and in bf16 of the fp32 master weights), give the 1-rank weights (within
  1e-6) and the replicated 2-rank weights (bit for bit, but where fp32 sums go in another order),
  also with a step where one rank has no row; resumed from a sharded checkpoint, the same weights;
- a zero_stage 2 checkpoint (grpo, sft, reward_model) is refused by a job with another zero_stage, naming both;
- rank 1 killed (SIGKILL) mid-run: the job ends at once with an error naming rank 1, no rank left;
- ranks started without the launcher (`ddp_timeout: 5`): rank 1 frozen (SIGSTOP) mid-run, rank 0
  ends within the timeout with an error naming the collective; rank 1 killed, rank 0 ends at once;
- per_step_prompts that does not split over the ranks is refused, naming the key."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_helpers import metrics, train  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--source", required=True)
ap.add_argument("--workdir", required=True)
ap.add_argument("--port", type=int, default=29671)
a = ap.parse_args()
sys.path.insert(0, os.path.join(a.source, "scripts", "bench"))
import ranks_by_hand  # noqa: E402

shutil.rmtree(a.workdir, ignore_errors=True)
os.makedirs(a.workdir)
ok = True


def check(cond, what):
    global ok
    print(("PASS " if cond else "FAIL ") + what)
    ok &= bool(cond)
    return bool(cond)


def drop(*dirs):
    """Removes the runs a passed check is done with: the test's checkpoints would otherwise come to
    about 2 GB (a failed check's runs stay for a look)."""
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def write_recipe(tag, text):
    """Writes recipe `text` to <workdir>/<tag>.yaml and returns the path."""
    path = os.path.join(a.workdir, tag + ".yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def recipe(tag, extra="", max_steps=3, save_every=0, base=None):
    model = f"model_dir: {base}\nsft_steps: 0" if base else f"model_config: {a.source}/recipes/tiny_model.json\nsft_steps: 300"
    return write_recipe(tag, f"""{model}
tokenizer: builtin:bytes
task: addition
task_digits: 1
train_size: 400
eval_size: 16
seed: 0
sft_batch_size: 32
sft_learning_rate: 0.002
rewards: math
max_steps: {max_steps}
per_step_prompts: {7 if tag == "odd" else 8}
num_generations: 4
max_completion_length: 6
learning_rate: 0.001
beta: 0.04
eval_every: 0
save_every: {save_every}
# the ranks' mini-batches (4 prompts x 4 samples each) are the single rank's two mini-batches
mini_batch_size: 16
recompute_old_logprobs: true
{extra}""")


def launch(args, check_rc=True):
    r = subprocess.run([a.grpo, "launch", "--nproc-per-node", "2", "--master-port", str(a.port), "--", a.grpo, *args],
                       capture_output=True, text=True, timeout=600)
    if check_rc and r.returncode != 0:
        sys.exit(f"grpo launch failed:\n{r.stderr}")
    return r


def wait_for_step(p, out, step, timeout):
    """Waits until `out`'s metrics.jsonl has trained step `step` (or the job ended)."""
    deadline = time.time() + timeout
    path = out + "/metrics.jsonl"
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(path) and any(m.get("step", 0) >= step and "loss" in m for m in metrics(path)):
            return
        time.sleep(0.01)


def weights(d):
    return load_file(os.path.join(d, "model.safetensors"))


def max_diff(x, y):
    return max((x[k] - y[k]).abs().max().item() for k in x)


# One warm start (300 supervised steps, so that rewards vary within groups) that every run below
# starts from.
base = os.path.join(a.workdir, "base")
train(a.grpo, recipe("base", max_steps=1), base)
base += "/checkpoint-0"

for loss in ("grpo", "dapo"):
  one = os.path.join(a.workdir, loss + "_1rank")
  train(a.grpo, recipe(loss, f"loss_type: {loss}\n", base=base), one)
  for zero in (0, 1, 2):
    rec = recipe(f"{loss}_zero{zero}", f"loss_type: {loss}\nzero_stage: {zero}\n", base=base)
    two = os.path.join(a.workdir, f"{loss}_zero{zero}_2ranks")
    launch(["train", rec, "--output", two])
    w1, w2, w0 = weights(one + "/checkpoint-3"), weights(two + "/checkpoint-3"), weights(base)
    d, moved = max_diff(w1, w2), max_diff(w1, w0)
    check(d <= 1e-6 and moved > 1e-4, f"{loss}, zero_stage {zero}: 2 ranks x 4 prompts vs 1 rank x 8: max |weight "
                                      f"diff| {d:.2e} after 3 steps (weights moved up to {moved:.2e})")
    m1 = [m for m in metrics(one + "/metrics.jsonl") if "loss" in m]
    m2 = [m for m in metrics(two + "/metrics.jsonl") if "loss" in m]
    same = len(m1) == len(m2) == 3 and all(abs(x[k] - y[k]) <= 1e-6 for x, y in zip(m1, m2)
                                            for k in ("loss", "reward", "reward_std", "kl", "grad_norm"))
    varied = any(m["reward_std"] > 0 for m in m1)
    if check(same and varied, f"{loss}, zero_stage {zero}: per-step loss/reward/kl/grad_norm equal; rewards "
                              f"{[round(m['reward'], 3) for m in m1]}, std {[round(m['reward_std'], 3) for m in m1]}"):
      drop(two)

# The gradient exchange of replicas without overlap, and in small buckets (many collectives, most of
# them started from autograd hooks while the backward pass goes on): the same update.
one = os.path.join(a.workdir, "grpo_1rank")
for extra in ("overlap_grad_reduce: false\n", "bucket_cap_mb: 0.01\n"):
  two = os.path.join(a.workdir, "grpo_zero0_" + ("off" if "false" in extra else "small"))
  launch(["train", recipe(os.path.basename(two), "loss_type: grpo\n" + extra, base=base), "--output", two])
  d = max_diff(weights(one + "/checkpoint-3"), weights(two + "/checkpoint-3"))
  overlap = [m.get("perf/grad_comm_overlap") for m in metrics(two + "/metrics.jsonl") if "loss" in m]
  with open(two + "/train.log") as f:
    line = next((l.strip() for l in f if "gradient exchange" in l), "")
  buckets = int(line.split("exchange: ")[1].split(" ")[0]) if line else 0
  ok_overlap = (overlap[-1] is None and not line) if "false" in extra else \
      (overlap[-1] is not None and overlap[-1] > 0.5 and buckets > 10)
  if check(d <= 1e-6 and ok_overlap, f"zero_stage 0, {extra.strip()}: max |weight diff| {d:.2e} against 1 rank; "
                                     f"'{line}'; share of gradient bytes sent during backward {overlap[-1]}"):
    drop(two)
if ok:  # every check that reads it passed
  drop(os.path.join(a.workdir, "dapo_1rank"))

# bf16 compute: with zero_stage 1 and 2 each rank keeps only its own tensors' fp32 master weights
# (and with 2 its own fp32 gradients, reduced after every mini-batch); the update is still the
# single rank's.
one = os.path.join(a.workdir, "bf16_1rank")
train(a.grpo, recipe("bf16", "bf16: true\n", base=base), one)
for zero, extra in ((1, ""), (2, ""), (2, "overlap_grad_reduce: false\n"), (2, "bucket_cap_mb: 0.01\n")):
  two = os.path.join(a.workdir, f"bf16_zero{zero}_2ranks" + ("_off" if "false" in extra else "_small" if extra else ""))
  launch(["train", recipe(os.path.basename(two), f"bf16: true\nzero_stage: {zero}\n{extra}", base=base), "--output", two])
  w1, w2, w0 = weights(one + "/checkpoint-3"), weights(two + "/checkpoint-3"), weights(base)
  d, moved = max_diff(w1, w2), max_diff(w1, w0)
  with open(two + "/train.log") as f:
    line = next((l.strip() for l in f if "master weights" in l), "")
  held = [float(x) for x in line.split("(this rank: ")[-1].split(" GB")[0].split(" of ")] if "this rank" in line else [1, 1]
  overlap = [m.get("perf/grad_comm_overlap") for m in metrics(two + "/metrics.jsonl") if "loss" in m]
  want_overlap = None if zero == 1 or "false" in extra else 0.5 if extra else 0.0  # share started during backward
  if check(d <= 1e-6 and moved > 1e-4 and held[0] < 0.75 * held[1] and
           (overlap[-1] is None if want_overlap is None else overlap[-1] is not None and overlap[-1] > want_overlap - 1e-9),
           f"bf16, zero_stage {zero} {extra.strip()}: 2 ranks vs 1 rank: max |fp32 weight diff| {d:.2e} (moved {moved:.2e}); "
           f"rank 0 holds {held[0]} of {held[1]} GB of fp32 master weights; gradient bytes sent during backward {overlap[-1]}"):
    drop(two)

# Dynamic sampling (DAPO): the ranks agree on which groups the step keeps and on when to stop
# refilling, so the kept groups are the single rank's (a rank may hold more or fewer than half).
dyn = "loss_type: dapo\ndynamic_sampling: true\nmax_num_gen_batches: 4\n"
one = os.path.join(a.workdir, "dyn_1rank")
train(a.grpo, recipe("dyn", dyn, base=base), one)
two = os.path.join(a.workdir, "dyn_2ranks")
launch(["train", recipe("dyn2", dyn + "zero_stage: 2\n", base=base), "--output", two])
d, moved = max_diff(weights(one + "/checkpoint-3"), weights(two + "/checkpoint-3")), max_diff(weights(one + "/checkpoint-3"), weights(base))
m1 = [m for m in metrics(one + "/metrics.jsonl") if "loss" in m]
m2 = [m for m in metrics(two + "/metrics.jsonl") if "loss" in m]
shape = lambda ms: [(m["gen_batches"], m["kept_groups"]) for m in ms]
refilled = any(g > 1 for g, _ in shape(m1))
# The kept groups split unevenly over the ranks, so their mini-batches are not the single rank's:
# rounding differs, and AdamW's normalised step turns that into more on tensors whose gradient is
# near zero: up to ~1e-6 on a Xeon, 1.7e-5 on an AMD EPYC, whose matrix products round differently
# with the row count. A wrong choice of groups moves weights by ~lr (1e-3).
if check(d <= 1e-4 and moved > 1e-4 and shape(m1) == shape(m2) and refilled,
         f"dynamic sampling on 2 ranks: max |weight diff| {d:.2e} against 1 rank (moved {moved:.2e}); (rollout batches, "
         f"kept groups) per step {shape(m2)} vs 1 rank {shape(m1)}"):
  drop(one, two)
if ok:  # the 1-rank runs the checks above compared against
  drop(os.path.join(a.workdir, "grpo_1rank"), os.path.join(a.workdir, "bf16_1rank"))

# A multi-stage recipe on 2 ranks: sft, rejection sampling, sft on its data, a reward model and grpo.
# per_device_train_batch_size is per rank (2 x 4 rows per step = 1 x 8), per_step_prompts global.
# Every step is whole (8 rows), so each rank's micro-batch is one of the single rank's.
def pipeline_recipe(tag, B):
    return write_recipe(tag, f"""model_dir: {base}
tokenizer: builtin:bytes
task: addition
task_digits: 1
train_size: 400
eval_size: 16
rewards: math
sft_steps: 0
seed: 0
stages:
  - name: sft
    type: sft
    max_length: 32
    per_device_train_batch_size: {B}
    mini_batch_size: 4
    max_steps: 2
    learning_rate: 0.001
    eval_every: 1
  - name: rs
    type: rejection_sampling
    model_dir: stage:sft
    num_samples: 2
    max_prompts: 30
    per_step_prompts: 10
    max_completion_length: 6
    temperature: 1.0
  - name: distill
    type: sft
    train_file: stage:rs
    max_length: 32
    packing: false
    per_device_train_batch_size: {B}
    mini_batch_size: 4
    max_steps: 2
    learning_rate: 0.001
  - name: rm
    type: reward_model
    model_dir: stage:sft
    task: addition_cot
    train_size: 64
    max_length: 96
    per_device_train_batch_size: {B}
    mini_batch_size: 4
    max_steps: 4
    learning_rate: 0.001
    eval_every: 4
  - name: rl
    model_dir: stage:distill
    per_step_prompts: 8
    num_generations: 4
    max_completion_length: 6
    mini_batch_size: 16
    recompute_old_logprobs: true
    max_steps: 2
    learning_rate: 0.001
    beta: 0.04
""")


one = os.path.join(a.workdir, "pipeline_1rank")
train(a.grpo, pipeline_recipe("pipeline1", 8), one)
two = os.path.join(a.workdir, "pipeline_2ranks")
launch(["train", pipeline_recipe("pipeline2", 4), "--output", two])
p1, p2 = (json.load(open(os.path.join(d, "pipeline.json"))) for d in (one, two))
done = all(st["status"] == "done" for st in p2["stages"]) and len(p2["stages"]) == 5
diffs = {}
for s1, s2 in zip(p1["stages"], p2["stages"]):
    if s1["type"] == "rejection_sampling":
        same = open(s1["output"], "rb").read() == open(s2["output"], "rb").read()
        diffs[s1["name"]] = "same data" if same else "DIFFERENT data"
        continue
    w1, w2 = weights(s1["output"]), weights(s2["output"])
    diffs[s1["name"]] = max_diff(w1, w2) if w1.keys() == w2.keys() else float("inf")
kept = json.load(open(os.path.join(two, "rs", "stats.json")))["kept"]
# The grpo stage starts from the distill stage's weights, equal to rounding (up to 2e-7 on an AMD
# EPYC), which AdamW's normalised steps grow as above (1.4e-5 there); wrong samples would move
# weights by ~lr (1e-3).
if check(done and diffs.get("rs") == "same data" and kept > 0 and
         all(isinstance(v, str) or v <= (1e-4 if k == "rl" else 1e-6) for k, v in diffs.items()),
         f"sft, rejection_sampling, sft, reward_model, grpo on 2 ranks vs 1 rank (pipeline.json all done: {done}; "
         f"{kept} samples kept): max |weight diff| per stage "
         + ", ".join(f"{k} {v if isinstance(v, str) else f'{v:.1e}'}" for k, v in diffs.items())):
  drop(one, two)

# A grpo stage's warm start on 2 ranks, from the base above: each step's 33 rows split 17 + 16, the
# loss over the whole batch's tokens, gradients summed: the 1-rank warm start's weights and loss.
# The ranks' passes of 17 and 16 rows round otherwise than one pass of 33 (the matrix products block
# their sums by row count), and AdamW's normalised steps grow that over 12 steps to ~2e-6 (from
# random weights, whose first steps are about lr * sign(g), to ~1e-4); a rank training without the
# other's gradients moves weights by ~lr (2e-3). AdamW hides a gradient's scale, so the logged loss
# is what shows a wrong normalisation.
def warm_recipe(tag):
    text = open(recipe(tag, max_steps=1, base=base)).read()
    return write_recipe(tag, text.replace("sft_steps: 0", "sft_steps: 12").replace("sft_batch_size: 32", "sft_batch_size: 33"))


def warm_losses(out):
    with open(out + "/train.log") as f:
        return [float(l.split("loss ")[1].split()[0]) for l in f if "warm start " in l and "loss " in l]


one, two = os.path.join(a.workdir, "warm_1rank"), os.path.join(a.workdir, "warm_2ranks")
train(a.grpo, warm_recipe("warm1"), one)
launch(["train", warm_recipe("warm2"), "--output", two])
w1 = weights(one + "/checkpoint-0")
d, moved = max_diff(w1, weights(two + "/checkpoint-0")), max_diff(w1, weights(base))
l1, l2 = warm_losses(one), warm_losses(two)
if check(d <= 2e-5 and moved > 1e-4 and len(l1) == 2 and l1 == l2,
         f"grpo warm start (12 steps of 33 rows) on 2 ranks vs 1 rank: max |weight diff| {d:.2e} (moved {moved:.2e}); "
         f"logged losses {l2} vs {l1}"):
  drop(one, two)

# Supervised stages with ZeRO. sft: 17 rows in steps of 8 (2 ranks x 4, or 1 x 8) in micro-batches
# of 2, so the last step has one row and rank 1 none (it takes part in the collectives with nothing).
# reward_model: 15 pairs in the same steps (its score head owned and updated like the model's tensors).
def supervised_recipe(tag, kind, B):
    data = ("train_size: 17\n    max_length: 32\n    packing: false" if kind == "sft" else
            "task: addition_cot\n    train_size: 19\n    max_length: 96")
    return write_recipe(tag, f"""model_dir: {base}
tokenizer: builtin:bytes
task: addition
task_digits: 1
eval_size: 4
seed: 0
sft_steps: 0
stages:
  - name: {kind}
    type: {kind}
    {data}
    per_device_train_batch_size: {B}
    mini_batch_size: 2
    learning_rate: 0.001
    save_every: 1
""")


for kind, last in (("sft", 3), ("reward_model", 2)):
  runs = {}
  for bf16 in ("false", "true"):
    runs[("1rank", bf16)] = os.path.join(a.workdir, f"{kind}_1rank_{bf16}")
    train(a.grpo, supervised_recipe(kind + "1", kind, 8), runs[("1rank", bf16)], f"bf16={bf16}")
    for zero in (0, 1, 2):
      runs[(zero, bf16)] = os.path.join(a.workdir, f"{kind}_zero{zero}_{bf16}")
      launch(["train", supervised_recipe(kind + "2", kind, 4), "--output", runs[(zero, bf16)], f"zero_stage={zero}",
              f"bf16={bf16}"])
  for bf16 in ("false", "true"):
    one = weights(runs[("1rank", bf16)] + f"/checkpoint-{last}")
    replicas = weights(runs[(0, bf16)] + f"/checkpoint-{last}")
    moved = max_diff(one, weights(runs[("1rank", bf16)] + "/checkpoint-1"))
    for zero in (1, 2):
      w = weights(runs[(zero, bf16)] + f"/checkpoint-{last}")
      d1, d0 = max_diff(one, w), max_diff(replicas, w)
      log = open(runs[(zero, bf16)] + "/train.log").read()
      files = sorted(f for f in os.listdir(runs[(zero, bf16)] + f"/checkpoint-{last}") if f.startswith("optimizer"))
      # fp32 replicas and owners sum the same gradients in the same order; with a sharded bf16 master,
      # zero_stage 2 adds each micro-batch's gradients on their owners, so fp32 sums in another order.
      exact = bf16 == "false" or zero == 1
      check(d1 <= 1e-6 and moved > 5e-4 and (d0 == 0 if exact else d0 <= 1e-7) and
            files == ["optimizer-rank1.pt", "optimizer.pt"] and (bf16 == "false" or "fp32 master weights" in log),
            f"{kind}, zero_stage {zero}, bf16 {bf16}: 2 ranks vs 1 rank: max |weight diff| {d1:.2e} (moved "
            f"{moved:.2e}); vs 2 replicas {d0:.1e}; AdamW state per rank {files}")
  # Resumed from a sharded checkpoint (the last one removed): the same weights to the bit.
  for zero in (1, 2):
    src = runs[(zero, "true")]
    part = src + "_resumed"
    shutil.copytree(src, part)
    shutil.rmtree(part + f"/checkpoint-{last}")
    with open(part + "/latest", "w") as f:
      f.write(f"checkpoint-{last - 1}")
    launch(["train", supervised_recipe(kind + "2", kind, 4), "--output", part, f"zero_stage={zero}", "bf16=true",
            "--resume"])
    d = max_diff(weights(src + f"/checkpoint-{last}"), weights(part + f"/checkpoint-{last}"))
    check(d == 0, f"{kind}, zero_stage {zero}, bf16: resumed from step {last - 1} on 2 ranks: step {last}'s weights "
                  f"as the run's (max |diff| {d})")
  r = launch(["train", supervised_recipe(kind + "2", kind, 4), "--output", runs[(2, "true")], "zero_stage=1",
              "bf16=true", "--resume"], check_rc=False)
  check(r.returncode != 0 and "zero_stage 2" in r.stderr and "zero_stage 1" in r.stderr,
        f"{kind}: a zero_stage 2 checkpoint resumed with zero_stage 1 is refused: " +
        next((l for l in r.stderr.split("\n") if "zero_stage" in l), r.stderr.strip()[-200:]))
  if ok:
    drop(*runs.values(), *(runs[(zero, "true")] + "_resumed" for zero in (1, 2)))

# Resume after SIGKILL of the whole job.
for zero in (0, 2, "2bf16"):
  extra = "zero_stage: 2\nbf16: true\n" if zero == "2bf16" else f"zero_stage: {zero}\n"
  rec = recipe(f"resume{zero}", extra, max_steps=4, save_every=1, base=base)
  full = os.path.join(a.workdir, f"resume{zero}_full")
  launch(["train", rec, "--output", full])
  part = os.path.join(a.workdir, f"resume{zero}_killed")
  p = subprocess.Popen([a.grpo, "launch", "--nproc-per-node", "2", "--master-port", str(a.port), "--", a.grpo, "train",
                        rec, "--output", part], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  wait_for_step(p, part, 2, 300)
  p.send_signal(signal.SIGKILL)
  p.wait()
  time.sleep(0.5)
  left = subprocess.run(["pgrep", "-f", part], capture_output=True, text=True).stdout.split()
  check(not left, f"SIGKILL of the launcher leaves no rank behind ({len(left)} left)")
  launch(["train", rec, "--output", part, "--resume"])
  d = max_diff(weights(full + "/checkpoint-4"), weights(part + "/checkpoint-4"))
  if check(d == 0, f"zero_stage {zero}: killed after step 2 and resumed on 2 ranks: final weights equal the "
                   f"uninterrupted run's (max |diff| {d})"):
    drop(part, *([] if zero == 2 else [full]))  # resume2_full is read again below

shards = sorted(f for f in os.listdir(os.path.join(a.workdir, "resume2_full", "checkpoint-4")) if f.startswith("optimizer"))
check(shards == ["optimizer-rank1.pt", "optimizer.pt"], f"zero_stage 2 checkpoints hold each rank's AdamW state: {shards}")
r = launch(["train", recipe("resume_other", "zero_stage: 1\n", max_steps=5, save_every=1, base=base), "--output",
            os.path.join(a.workdir, "resume2_full"), "--resume"], check_rc=False)
check(r.returncode != 0 and "zero_stage 2" in r.stderr and "zero_stage 1" in r.stderr,
      "a zero_stage 2 checkpoint resumed with zero_stage 1 is refused: " +
      next((l for l in r.stderr.split("\n") if "zero_stage" in l), r.stderr.strip()[-200:]))

# One rank killed mid-run: the launcher ends the job, naming that rank, and no rank is left.
rec = recipe("kill_one", max_steps=200, base=base)
out = os.path.join(a.workdir, "kill_one")
p = subprocess.Popen([a.grpo, "launch", "--nproc-per-node", "2", "--master-port", str(a.port), "--grace-seconds", "5",
                      "--", a.grpo, "train", rec, "--output", out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     text=True)
wait_for_step(p, out, 2, 120)
ranks = sorted(int(x) for x in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split())
t0 = time.time()
def rank_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    return int(env.get(b"RANK", b"-1"))


victim = next((pid for pid in ranks if rank_of(pid) == 1), None)
if len(ranks) == 2 and victim:
    os.kill(victim, signal.SIGKILL)
err = p.communicate(timeout=60)[1]
took = time.time() - t0
time.sleep(0.3)
left = subprocess.run(["pgrep", "-f", out], capture_output=True, text=True).stdout.split()
check(len(ranks) == 2 and p.returncode != 0 and "rank 1" in err and "signal 9" in err and took < 10 and not left,
      f"rank 1 killed at step 2: the job ended in {took:.1f} s with exit {p.returncode}, no rank left ({len(left)}): "
      + next((l for l in err.split("\n") if "grpo launch" in l), err.strip()[-200:]))

# Ranks started by hand, with no launcher to stop the others (as under a scheduler that starts each
# rank itself): rank 1 frozen (SIGSTOP) mid-run, rank 0 ends within ddp_timeout with an error naming
# the collective; rank 1 killed (SIGKILL), rank 0 ends at once.
for how in ("frozen", "killed"):
  rec = recipe("alone_" + how, "ddp_timeout: 5\n", max_steps=200, base=base)
  out = os.path.join(a.workdir, "alone_" + how)
  ranks = ranks_by_hand.start(a.grpo, rec, out, a.port + 1)
  ranks_by_hand.wait_for_step(ranks, out, 2, 120)
  code, took, err = ranks_by_hand.stop_one(ranks, 1, signal.SIGSTOP if how == "frozen" else signal.SIGKILL, 60)
  line = ranks_by_hand.error_line(err)
  limit = 5 + 10 if how == "frozen" else 10
  check(code not in (0, None) and "across ranks failed" in line and took < limit,
        f"no launcher, rank 1 {how} at step 2: rank 0 ended in {took:.1f} s (ddp_timeout 5) with exit {code}: {line}")

r = launch(["train", recipe("odd", base=base), "--output", os.path.join(a.workdir, "odd")], check_rc=False)
check(r.returncode != 0 and "per_step_prompts" in r.stderr, "per_step_prompts 7 over 2 ranks is refused: " +
      next((l for l in r.stderr.split("\n") if "per_step_prompts" in l), r.stderr.strip()[-200:]))
print("data parallel:", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)

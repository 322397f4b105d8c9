"""Trainer features beyond the plain loop, on CPU with the tiny model:
- bf16 compute with fp32 master weights: checkpoints hold fp32 weights that bf16 cannot represent
  (the updates accumulate in fp32), and a run stopped at a checkpoint and resumed gives the same
  per-step losses as an uninterrupted one (within 1e-6);
- dynamic sampling: zero-variance groups are dropped and further prompts sampled to refill the
  step (the data position moves by every batch drawn), up to max_num_gen_batches;
- the sequence-wise MoE balance loss is reported and scales with aux_loss_alpha;
- evaluation with k samples per prompt reports mean reward, mean accuracy and pass@k >= accuracy;
- the rollout engine's log-probs (pi_old) equal the training forward's in fp32; with
  recompute_old_logprobs the training forward supplies pi_old (ratio exactly 1 at the first update);
- exact_rollout: in bf16 the engine's log-probs equal the training forward's to the bit (diff 0, first
  update's ratio exactly 1 with the engine's pi_old); the update that takes the engine's values and
  routing records instead of running the batch-invariant forward trains bit for bit as the one that
  runs it;
- rollout importance sampling (token level, truncated and masked) logs the ratio pi_old / pi_rollout
  and the share of tokens truncated or masked; it needs recompute_old_logprobs;
- FP8 rollout weights: the engine's log-probs drift further from the bf16 training forward than
  bf16's own, the run trains, and rollout_is logs the ratios; with exact_rollout it is refused;
- routing replay logs the size of the rollout's expert records and the training router's agreement
  with them, trains as the plain run does when they agree, and is refused for a model without MoE;
- asynchronous rollout: with staleness 0 (the rollout thread on a copy of the policy, started after
  each update) the run equals the synchronous loop bit for bit, in fp32 and bf16, and with the copy
  on the device rollout_device names (the key refused without async_rollout); one-step-off, the
  first step equals the synchronous one, the later ones train on samples one update old (logged),
  whose importance ratios pi_old / pi_rollout then spread far wider; such a run resumes."""
import json
import os
import subprocess
import sys

import torch
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_helpers import Checks, test_args  # noqa: E402

a = test_args()

BASE = f"""model_config: {a.source}/recipes/tiny_model.json
task: addition
task_digits: 1
train_size: 60
eval_size: 12
sft_steps: 30
per_step_prompts: 4
num_generations: 4
max_completion_length: 4
learning_rate: 0.0005
beta: 0.02
"""


def train(name, body, *extra):
    path = os.path.join(a.workdir, name + ".yaml")
    keys = {}  # the body's keys replace BASE's (a recipe may not give a key twice)
    for line in (BASE + body).splitlines():
        if line.strip():
            keys[line.split(":")[0]] = line
    open(path, "w").write("\n".join(keys.values()) + "\n")
    out = os.path.join(a.workdir, name)
    r = subprocess.run([a.grpo, "train", path, "--output", out, *extra], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{name}: grpo train failed:\n{r.stderr}")
    return out


def metrics(out):
    rows = {}
    for line in open(os.path.join(out, "metrics.jsonl")):
        m = json.loads(line)
        rows[m["step"]] = {**rows.get(m["step"], {}), **m}
    return rows


check = Checks()


def same_run(x, y, steps):
    keys = ("loss", "reward", "kl", "grad_norm", "completions/mean_length")
    return all(x[s][k] == y[s][k] for s in steps for k in keys)


def same_weights(x, y, step):
    with safe_open(os.path.join(x, f"checkpoint-{step}", "model.safetensors"), "pt") as f, \
            safe_open(os.path.join(y, f"checkpoint-{step}", "model.safetensors"), "pt") as g:
        return all(torch.equal(f.get_tensor(n), g.get_tensor(n)) for n in f.keys())



# --- bf16 compute, fp32 master weights
full = train("bf16", "bf16: true\nmax_steps: 6\nsave_every: 3\neval_every: 0\n")
cut = train("bf16_cut", "bf16: true\nmax_steps: 3\nsave_every: 3\neval_every: 0\n")
train("bf16_cut", "bf16: true\nmax_steps: 6\nsave_every: 3\neval_every: 0\n", "--resume")
ref, got = metrics(full), metrics(cut)
worst = max(abs(ref[s]["loss"] - got[s]["loss"]) for s in range(1, 7))
learning = sum(1 for s in range(1, 7) if ref[s]["loss"] != 0)
check(worst < 1e-6 and learning >= 2,
      f"bf16 run resumed at step 3 matches the uninterrupted run: max |loss diff| {worst:.2e} ({learning} learning steps)")
with safe_open(os.path.join(full, "checkpoint-6", "model.safetensors"), "pt") as f:
    names = [n for n in f.keys() if "e_score_correction_bias" not in n]
    dtypes = {str(f.get_tensor(n).dtype) for n in names}
    off_grid = sum(int((f.get_tensor(n) != f.get_tensor(n).bfloat16().float()).sum()) for n in names)
    total = sum(f.get_tensor(n).numel() for n in names)
check(dtypes == {"torch.float32"} and off_grid > total // 2,
      f"bf16 run checkpoints fp32 master weights: dtypes {sorted(dtypes)}, {off_grid}/{total} values off the bf16 grid")
with safe_open(os.path.join(full, "checkpoint-0", "model.safetensors"), "pt") as f0, \
        safe_open(os.path.join(full, "checkpoint-6", "model.safetensors"), "pt") as f6:
    moved = sum(int((f0.get_tensor(n) != f6.get_tensor(n)).sum()) for n in names)
check(moved > total // 2, f"GRPO steps moved the master weights: {moved}/{total} values changed since checkpoint-0")

bf16_diff = max(ref[s]["rollout_logprob_diff"] for s in range(1, 7))
spread = [(ref[s]["rollout_logprob_diff/p50"], ref[s]["rollout_logprob_diff/p99"], ref[s]["rollout_logprob_diff/max"])
          for s in range(1, 7)]
check(0 < bf16_diff < 0.05 and all(p50 <= p99 <= mx for p50, p99, mx in spread) and max(x[2] for x in spread) > 0,
      f"bf16: rollout log-probs within {bf16_diff:.4f} (mean per token) of the training forward; step 1's per-token "
      f"|diff| median {spread[0][0]:.1e}, p99 {spread[0][1]:.1e}, max {spread[0][2]:.1e}")

# recompute_old_logprobs: pi_old from the training forward, so the first update's ratio is exactly 1
# and (beta 0, grpo aggregation) the loss is the mean of -advantage: 0, as group advantages sum to 0.
# The engine's bf16 pi_old differs slightly, so its loss is not 0.
# The prompts in file order: its first step has groups whose rewards differ (non-zero advantages).
one = "bf16: true\nbeta: 0.0\nloss_type: grpo\nmax_steps: 1\nsave_every: 0\neval_every: 0\nshuffle: false\n"
engine = metrics(train("bf16_engine_old", one))[1]
recomputed_loss = metrics(train("bf16_recomputed_old", one + "recompute_old_logprobs: true\n"))[1]["loss"]
check(abs(recomputed_loss) < 1e-6 < abs(engine["loss"]) and engine["frac_reward_zero_std"] < 1,
      f"recompute_old_logprobs: first-step loss {recomputed_loss:.1e} (ratio 1), {engine['loss']:.1e} with the engine's "
      f"pi_old ({engine['frac_reward_zero_std']:.2f} of the groups without signal)")

# exact_rollout: the engine and the trainer share the batch-invariant forward, so in bf16 the
# engine's pi_old equals the training forward's to the bit: the first update's ratio is exactly 1
# without recomputing pi_old, and every step's per-token difference is 0.
# exact_rollout_check_every: 1 runs the batch-invariant training forward on every step to measure it.
exact_one = metrics(train("bf16_exact_one", one + "exact_rollout: true\nexact_rollout_check_every: 1\n"))[1]
exact4 = "bf16: true\nexact_rollout: true\nmax_steps: 4\nsave_every: 4\neval_every: 0\n"
checked_dir = train("bf16_exact", exact4 + "exact_rollout_check_every: 1\n")
exact = metrics(checked_dir)
exact_max = max(exact[s]["rollout_logprob_diff/max"] for s in range(1, 5))
check(exact_one["rollout_logprob_diff/max"] == 0 and abs(exact_one["loss"]) < 1e-6 and exact_max == 0
      and all(exact[s]["rollout_logprob_diff"] == 0 for s in range(1, 5)) and exact[4]["grad_norm"] > 0,
      f"exact_rollout (bf16): first-step loss {exact_one['loss']:.1e} with the engine's pi_old (ratio 1); max per-token "
      f"|engine - training| over 4 steps {exact_max} (against {spread[0][2]:.1e} without)")
# By default the update takes the engine's log-probs and routing records for that forward's (they
# are equal), running it only on check steps (1, 11, ...): the same training, bit for bit.
reused_dir = train("bf16_exact_reused", exact4)
reused = metrics(reused_dir)
check(same_run(exact, reused, range(1, 5)) and same_weights(checked_dir, reused_dir, 4)
      and reused[1]["rollout_logprob_diff/max"] == 0 and not any("rollout_logprob_diff" in reused[s] for s in (2, 3, 4))
      and reused[4]["routing/replay_mb"] > 0,
      "exact_rollout with the engine's values reused (steps 2-4): per-step loss, reward, kl, grad norm, length and the "
      f"weights after 4 steps equal the run that recomputes them; update {sum(reused[s]['time_train'] for s in (2, 3, 4)):.2f} s "
      f"against {sum(exact[s]['time_train'] for s in (2, 3, 4)):.2f} s; records {reused[4]['routing/replay_mb']:.3f} MiB")

# --- dynamic sampling, balance loss, k-sample evaluation
dyn = train("dynamic", "dynamic_sampling: true\nmax_num_gen_batches: 3\naux_loss_alpha: 0.001\nmax_steps: 5\n"
            "save_every: 5\neval_every: 5\neval_num_generations: 4\n")
m = metrics(dyn)
steps = [m[s] for s in range(1, 6)]
drawn = sum(s["gen_batches"] for s in steps)
state = json.load(open(os.path.join(dyn, "checkpoint-5", "trainer_state.json")))
check(state["position"] == drawn * 4, f"data position {state['position']} = {drawn} batches x 4 prompts")
check(all(s["kept_groups"] == 4 or s["gen_batches"] == 3 for s in steps) and all(s["kept_groups"] <= 4 for s in steps),
      "each step refills to 4 kept groups unless it drew max_num_gen_batches: " +
      ", ".join(f"{s['gen_batches']} batches -> {s['kept_groups']} groups" for s in steps))
check(any(s["gen_batches"] > 1 for s in steps), "some step sampled again to replace zero-variance groups")
aux = [s["aux_loss"] for s in steps if s["kept_groups"] > 0]
check(len(aux) > 0 and all(0 < x < 0.1 for x in aux), f"balance loss reported: {[round(x, 5) for x in aux]}")
fp32_diff = max(s["rollout_logprob_diff"] for s in steps if s["kept_groups"] > 0)
fp32_max = max(s["rollout_logprob_diff/max"] for s in steps if s["kept_groups"] > 0)
check(fp32_diff < 1e-5 and fp32_max < 1e-4, f"fp32: the engine's pi_old equals the training forward: mean |diff| per "
      f"token <= {fp32_diff:.1e}, largest {fp32_max:.1e}")
e = m[5]
check(all(k in e for k in ("eval_accuracy", "eval_sampled_reward", "eval_sampled_accuracy", "eval_pass_at_k"))
      and e["eval_sampled_accuracy"] <= e["eval_pass_at_k"] <= 1,
      f"k-sample eval: sampled accuracy {e.get('eval_sampled_accuracy')}, pass@4 {e.get('eval_pass_at_k')}")
dyn10 = train("dynamic10", "dynamic_sampling: true\nmax_num_gen_batches: 3\naux_loss_alpha: 0.01\nmax_steps: 1\n"
              "save_every: 0\neval_every: 0\n")
a1, a10 = m[1]["aux_loss"], metrics(dyn10)[1]["aux_loss"]
check(m[1]["kept_groups"] > 0 and abs(a10 / a1 - 10) < 1e-3, f"balance loss scales with alpha: {a1:.6f} -> {a10:.6f}")

# --- rollout importance sampling: bf16 makes the engine's pi_rollout differ from the training
# forward's pi_old; the weights and their statistics are logged, and the loss changes with them.
is_steps = {}
for mode in ("truncate", "mask"):
    is_steps[mode] = metrics(train("is_" + mode, one + "recompute_old_logprobs: true\nrollout_is: token\n"
                                   f"rollout_is_mode: {mode}\nrollout_is_threshold: 1.0005\nmax_steps: 2\n"))[2]
t, k = is_steps["truncate"], is_steps["mask"]
check(t["rollout_is/ratio_min"] < 1 < t["rollout_is/ratio_max"] and 0 < t["rollout_is/truncated_fraction"] < 1
      and 0 < k["rollout_is/masked_fraction"] < 1 and abs(t["rollout_is/ratio_mean"] - 1) < 0.05,
      f"rollout_is token (C 1.0005): ratio mean {t['rollout_is/ratio_mean']:.4f} in [{t['rollout_is/ratio_min']:.5f}, "
      f"{t['rollout_is/ratio_max']:.5f}]; truncated {t['rollout_is/truncated_fraction']:.3f}, masked "
      f"{k['rollout_is/masked_fraction']:.3f} of the tokens")
r = subprocess.run([a.grpo, "train", os.path.join(a.workdir, "bad_is.yaml"), "--output", os.path.join(a.workdir, "bad_is")],
                   capture_output=True, text=True) if open(os.path.join(a.workdir, "bad_is.yaml"), "w").write(
                       BASE + "rollout_is: sequence\n") else None
check(r.returncode != 0 and "recompute_old_logprobs" in r.stderr,
      "rollout_is without recompute_old_logprobs is refused: " + r.stderr.strip().splitlines()[-1][:160])

# --- FP8 rollout weights: the engine decodes with e4m3 copies of the weights (an emulation of the
# FP8 products on the CPU), requantized after every update: its log-probs drift further from the
# bf16 training forward than bf16's own, and rollout_is weighs the difference.
fp8_recipe = "bf16: true\nmax_steps: 3\nsave_every: 0\neval_every: 0\nrecompute_old_logprobs: true\nrollout_is: token\n"
bf16_run = metrics(train("bf16_for_fp8", fp8_recipe))
fp8_run = metrics(train("fp8", fp8_recipe + "rollout_quantization: fp8\n"))
drift = [(bf16_run[s]["rollout_logprob_diff"], fp8_run[s]["rollout_logprob_diff"]) for s in (1, 2, 3)]
check(all(2 * b < f < 0.1 for b, f in drift) and fp8_run[3]["grad_norm"] > 0
      and all(fp8_run[s]["rollout/fp8_quantize_s"] > 0 for s in (1, 2, 3)) and "rollout/fp8_quantize_s" not in bf16_run[1]
      and fp8_run[3]["rollout_is/ratio_min"] < 1 < fp8_run[3]["rollout_is/ratio_max"],
      "rollout_quantization fp8: mean per-token |engine - training| per step " +
      ", ".join(f"{f:.4f} (bf16 {b:.4f})" for b, f in drift) +
      f"; step 3's importance ratios in [{fp8_run[3]['rollout_is/ratio_min']:.3f}, {fp8_run[3]['rollout_is/ratio_max']:.3f}]"
      f"; requantizing took {fp8_run[2]['rollout/fp8_quantize_s'] * 1e3:.1f} ms at step 2")
open(os.path.join(a.workdir, "fp8_exact.yaml"), "w").write(BASE + "rollout_quantization: fp8\nexact_rollout: true\n")
r = subprocess.run([a.grpo, "train", os.path.join(a.workdir, "fp8_exact.yaml"), "--output", os.path.join(a.workdir, "fp8_exact")],
                   capture_output=True, text=True)
check(r.returncode != 0 and "rollout_quantization" in r.stderr,
      "rollout_quantization fp8 with exact_rollout is refused: " + (r.stderr.strip().splitlines() or [""])[-1][:160])

# --- routing replay: in fp32 the rollout's experts are (near-ties aside) the training router's own,
# so the replayed run trains as the plain one.
plain_rr = metrics(train("plain_rr", "beta: 0.0\nmax_steps: 2\nsave_every: 0\neval_every: 0\nshuffle: false\n"))
replay = metrics(train("replay", "beta: 0.0\nmax_steps: 2\nsave_every: 0\neval_every: 0\nshuffle: false\n"
                       "routing_replay: true\nrecompute_old_logprobs: true\n"))
agree = [replay[s]["routing/agreement"] for s in (1, 2)]
mb = [replay[s]["routing/replay_mb"] for s in (1, 2)]
loss_gap = max(abs(plain_rr[s]["loss"] - replay[s]["loss"]) for s in (1, 2))
check(all(0.97 <= x <= 1 for x in agree) and all(x > 0 for x in mb) and loss_gap < 1e-4,
      f"routing_replay: router agreement with the rollout {agree}, records {[round(x, 4) for x in mb]} MB a step, "
      f"|loss - plain run's| <= {loss_gap:.1e}")
dense = os.path.join(a.workdir, "dense.json")
open(dense, "w").write(json.dumps({"model_type": "qwen2", "vocab_size": 300, "hidden_size": 32, "intermediate_size": 48,
                                   "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                   "max_position_embeddings": 256}))
open(os.path.join(a.workdir, "dense_rr.yaml"), "w").write(
    BASE.replace(f"{a.source}/recipes/tiny_model.json", dense) + "routing_replay: true\n")
r = subprocess.run([a.grpo, "train", os.path.join(a.workdir, "dense_rr.yaml"), "--output", os.path.join(a.workdir, "dense_rr")],
                   capture_output=True, text=True)
check(r.returncode != 0 and "routing_replay" in r.stderr and "MoE" in r.stderr,
      "routing_replay on a dense model is refused: " + (r.stderr.strip().splitlines() or [""])[-1][:160])

# --- asynchronous rollout
run4 = "max_steps: 4\nsave_every: 2\neval_every: 0\nbeta: 0.0\nrecompute_old_logprobs: true\nrollout_is: token\n"
for dtype in ("fp32", "bf16"):
    extra = run4 + ("bf16: true\n" if dtype == "bf16" else "")
    sync_dir, async0_dir = train("sync_" + dtype, extra), train("async0_" + dtype, extra + "async_rollout: 0\n")
    sync_m, async0 = metrics(sync_dir), metrics(async0_dir)
    check(same_run(sync_m, async0, range(1, 5)) and same_weights(sync_dir, async0_dir, 4)
          and all(async0[s]["async/staleness"] == 0 for s in range(1, 5)),
          f"async_rollout 0 ({dtype}): per-step loss, reward, kl, grad norm and length, and the weights after 4 "
          "steps, equal the synchronous run's")
    if dtype == "fp32":
        sync_fp32, async0_fp32 = sync_m, async0
# The sampling copy on a device named by rollout_device (here the CPU again: the path that moves the
# copy and sizes its cache runs; a second GPU is the use), and the key refused without async_rollout.
device_dir = train("async0_device", run4 + "async_rollout: 0\nrollout_device: cpu\n")
check(same_run(sync_fp32, metrics(device_dir), range(1, 5)),
      "async_rollout 0 with rollout_device: cpu equals the synchronous run")
for name, body, needle in (("no_async", "rollout_device: cpu\n", "needs async_rollout"),
                           ("bad_device", "async_rollout: 1\nrollout_device: gpu1\n", "is not a device")):
    path = os.path.join(a.workdir, f"device_{name}.yaml")
    open(path, "w").write(BASE + body)
    r = subprocess.run([a.grpo, "train", path, "--output", os.path.join(a.workdir, f"device_{name}")],
                       capture_output=True, text=True)
    check(r.returncode != 0 and "rollout_device" in r.stderr and needle in r.stderr,
          f"rollout_device ({name}) is refused: " + (r.stderr.strip().splitlines() or [""])[-1][:160])
async1_dir = train("async1", run4 + "async_rollout: 1\n")
async1 = metrics(async1_dir)
spread = lambda m, s: m[s]["rollout_is/ratio_max"] - m[s]["rollout_is/ratio_min"]
# Stale samples: those of a step whose sampling weights lack an update that moved the weights.
moved = [s for s in (2, 3, 4) if async1[s - 1]["grad_norm"] > 0]
stale = min(spread(async1, s) for s in moved) if moved else 0
fresh = max(spread(async0_fp32, s) for s in (2, 3, 4))
check(same_run(sync_fp32, async1, [1]) and [async1[s]["async/staleness"] for s in range(1, 5)] == [0, 1, 1, 1]
      and stale > 10 * fresh,
      f"async_rollout 1: step 1 as the synchronous run, staleness {[async1[s]['async/staleness'] for s in range(1, 5)]}; "
      f"importance ratio spread of the stale steps >= {stale:.2e}, of fresh ones <= {fresh:.2e}")
cut_dir = train("async1_cut", run4.replace("max_steps: 4", "max_steps: 2") + "async_rollout: 1\n")
train("async1_cut", run4 + "async_rollout: 1\n", "--resume")
resumed = metrics(cut_dir)
check(all(s in resumed and "loss" in resumed[s] for s in range(1, 5)) and same_run(async1, resumed, [1, 2]) and resumed[3]["async/staleness"] == 0,
      "async_rollout 1 resumes at step 2 (the batch in flight is drawn again, by the checkpoint's weights: staleness "
      f"{resumed[3]['async/staleness']} at step 3)")

check.finish()

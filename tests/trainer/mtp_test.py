"""The MTP loss (mtp_loss_weight) end to end on the built-in tiny model with one MTP module (fp32, CPU):
- an sft stage trains the module with the model: mtp_loss is logged every step and falls, the
  checkpoint holds the module under DeepSeek-V3's names, and `grpo logprobs --mtp` reads it back;
- a grpo stage trains the module on the completions while the policy's own update stays GRPO's:
  with and without the MTP loss (same seed, no gradient clipping), every main-model tensor after the
  steps is bit-identical and only the module's tensors differ;
- the trained module drafts for speculative_mtp: a grpo run with it keeps most of its first step's drafts,
  and with exact_rollout (bf16) the engine's log-probs still equal the training forward's to the bit
  (and taking them for the training forward's trains to the same weights);
- a model without an MTP module, and LoRA, are refused with the key named."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_helpers import Checks, metrics, tensors, test_args, train  # noqa: E402

a = test_args()
check = Checks()


cfg = json.load(open(os.path.join(a.source, "recipes/tiny_model.json")))
L = cfg["num_hidden_layers"]
cfg["num_nextn_predict_layers"] = 1
config_path = os.path.join(a.workdir, "tiny_mtp.json")
json.dump(cfg, open(config_path, "w"))


def recipe(name, text):
    path = os.path.join(a.workdir, name + ".yaml")
    open(path, "w").write(text)
    return path


# --- sft: the module learns with the model ------------------------------------------------------
sft_dir = os.path.join(a.workdir, "sft")
train(a.grpo, recipe("sft", f"""model_config: {config_path}
tokenizer: builtin:bytes
type: sft
task: addition_cot
train_size: 400
eval_size: 16
max_length: 128
per_device_train_batch_size: 8
max_steps: 60
num_train_epochs: 4
learning_rate: 0.003
mtp_loss_weight: 0.3
save_every: 60
eval_every: 0
seed: 0
"""), sft_dir)
m = [r for r in metrics(os.path.join(sft_dir, "metrics.jsonl")) if "loss" in r]
mtp = [r.get("mtp_loss") for r in m]
check(len(m) == 60 and all(v is not None for v in mtp), f"sft logs mtp_loss on all {len(m)} steps")
first, last = sum(mtp[:3]) / 3, sum(mtp[-3:]) / 3
check(last < 0.6 * first, f"sft: mtp_loss falls from {first:.3f} to {last:.3f}")
ck = os.path.join(sft_dir, "checkpoint-60")
names = tensors(os.path.join(ck, "model.safetensors"))
mtp_names = [k for k in names if k.startswith(f"model.layers.{L}.")]
check(f"model.layers.{L}.eh_proj.weight" in names and f"model.layers.{L}.shared_head.head.weight" in names,
      f"the checkpoint holds the MTP module as model.layers.{L}.* ({len(mtp_names)} tensors)")
rows = os.path.join(a.workdir, "rows.jsonl")
with open(rows, "w") as f:
    f.write(json.dumps({"prompt_ids": [49, 50, 43], "completion_ids": [51, 52, 53, 54]}) + "\n")
out = os.path.join(a.workdir, "rows.out.jsonl")
subprocess.run([a.grpo, "logprobs", "--model", ck, "--input", rows, "--output", out, "--mtp"], check=True)
got = json.loads(open(out).read())
check(len(got["mtp_logprobs"]) == 1 and len(got["mtp_logprobs"][0]) == 4
      and all(v < 0 for v in got["mtp_logprobs"][0]), "grpo logprobs --mtp reads the trained module")

# --- grpo: the module learns on the completions, the policy's update is untouched ---------------
def grpo_run(tag, weight, speculative=False, extra=""):
    out_dir = os.path.join(a.workdir, tag)
    train(a.grpo, recipe(tag, f"""model_dir: {ck}
tokenizer: builtin:bytes
task: addition
train_size: 64
eval_size: 8
rewards: math,format:0.1
per_step_prompts: 8
num_generations: 4
max_completion_length: 100
max_steps: 2
learning_rate: 0.002
max_grad_norm: 1.0e9
mtp_loss_weight: {weight}
speculative_mtp: {str(speculative).lower()}
save_every: 2
eval_every: 0
seed: 0
""" + extra), out_dir)
    return out_dir


with_mtp, without = grpo_run("grpo_mtp", 1.0), grpo_run("grpo_plain", 0)
gm = metrics(os.path.join(with_mtp, "metrics.jsonl"))
check(all("mtp_loss" in r and r["mtp_loss"] > 0 for r in gm if "loss" in r), "grpo logs mtp_loss every step")
check(all("mtp_loss" not in r for r in metrics(os.path.join(without, "metrics.jsonl"))), "no mtp_loss when the weight is 0")
t1 = tensors(os.path.join(with_mtp, "checkpoint-2", "model.safetensors"))
t0 = tensors(os.path.join(without, "checkpoint-2", "model.safetensors"))
start = tensors(os.path.join(ck, "model.safetensors"))
main = [k for k in t0 if not k.startswith(f"model.layers.{L}.")]
changed = [k for k in main if t0[k] != start[k]]
check(len(changed) > 10, f"the policy trained ({len(changed)} main tensors moved)")
check(all(t1[k] == t0[k] for k in main), f"all {len(main)} main-model tensors bit-identical with and without the MTP loss")
moved = [k for k in mtp_names if t1[k] != start[k]]
check(len(moved) > 5 and all(t0[k] == start[k] for k in mtp_names),
      f"the MTP module trains only with the loss on ({len(moved)} of {len(mtp_names)} tensors moved)")

spec = metrics(os.path.join(grpo_run("grpo_spec", 1.0, speculative=True), "metrics.jsonl"))
acc = [r.get("rollout/draft_acceptance", 0) for r in spec if "loss" in r]
# The first step samples from the sft checkpoint the module was trained with; the policy then moves
# at this run's large learning rate, and the module follows it a step behind.
check(len(acc) == 2 and acc[0] > 0.5 and min(acc) > 0.2, f"speculative_mtp with the trained module keeps {acc} of its drafts")

# With exact_rollout (bf16) the policy's check of the drafts runs through the batch-invariant
# forward: kept drafts and all, the engine's log-probs equal the training forward's to the bit.
spec_exact = "bf16: true\nexact_rollout: true\nnum_speculative_tokens: 3\n"
checked_dir = grpo_run("grpo_spec_exact", 1.0, speculative=True, extra=spec_exact + "exact_rollout_check_every: 1\n")
exact = [r for r in metrics(os.path.join(checked_dir, "metrics.jsonl")) if "loss" in r]
check(len(exact) == 2 and all(r["rollout_logprob_diff/max"] == 0 and r["rollout/draft_acceptance"] > 0.2 for r in exact),
      "speculative_mtp with exact_rollout (bf16): max per-token |engine - training| "
      f"{[r['rollout_logprob_diff/max'] for r in exact]}, drafts kept {[r['rollout/draft_acceptance'] for r in exact]}")
# By default step 2 takes the engine's values and routing records (the kept tokens' rows) for the
# batch-invariant forward's: the same weights after it.
reused_dir = grpo_run("grpo_spec_exact_reused", 1.0, speculative=True, extra=spec_exact)
reused = [r for r in metrics(os.path.join(reused_dir, "metrics.jsonl")) if "loss" in r]
check(len(reused) == 2 and "rollout_logprob_diff" not in reused[1]
      and tensors(os.path.join(reused_dir, "checkpoint-2", "model.safetensors"))
      == tensors(os.path.join(checked_dir, "checkpoint-2", "model.safetensors")),
      "speculative_mtp with exact_rollout taking the engine's values on step 2: the same weights as recomputing them")

# --- refusals -----------------------------------------------------------------------------------
def refused(tag, text, words):
    r = subprocess.run([a.grpo, "train", recipe(tag, text), "--output", os.path.join(a.workdir, tag)],
                       capture_output=True, text=True)
    check(r.returncode != 0 and all(w in r.stderr for w in words), f"{tag} refused: {r.stderr.strip()[-160:]}")


base = f"tokenizer: builtin:bytes\ntask: addition\nmax_steps: 1\nmtp_loss_weight: 0.5\n"
refused("no_module", f"model_config: {a.source}/recipes/tiny_model.json\n" + base, ["mtp_loss_weight", "no MTP module"])
refused("lora", f"model_config: {config_path}\nlora_r: 4\n" + base, ["mtp_loss_weight", "LoRA"])
check.finish()

"""LoRA stages end to end on the built-in tiny model (fp32, CPU):
- a grpo stage with adapters (lora_r 8, all-linear, beta > 0) from a full sft stage's checkpoint:
  its checkpoints are PEFT adapters over that checkpoint (base_model_name_or_path), the engine's
  log-probs equal the training forward's with adapters in the model (rollout_logprob_diff), the KL
  to the reference (the base, adapters off) starts at 0 and grows;
- killed with SIGKILL inside the LoRA stage and resumed: the final adapter is bit-identical to an
  uninterrupted run's;
- a LoRA sft stage on a random base writes the base once (base/) and adapters that name it; a full
  sft stage from that adapter (model_dir: stage:NAME, lora_r 0) starts from the merged model, so its
  held-out loss before training equals the LoRA stage's last one;
- gate_proj without up_proj (one fused weight in the experts) is refused."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_helpers import Checks, kill_when, metrics, tensors, test_args, train  # noqa: E402

a = test_args()

RECIPE = f"""model_config: {a.source}/recipes/tiny_model.json
tokenizer: builtin:bytes
train_size: 400
eval_size: 32
seed: 0
stages:
  - name: cold_start
    type: sft
    task: addition_cot
    max_length: 128
    per_device_train_batch_size: 8
    max_steps: 60
    learning_rate: 0.003
    save_every: 60
  - name: lora_rl
    model_dir: stage:cold_start
    task: addition
    rewards: math,format:0.1
    lora_r: 8
    lora_alpha: 16
    max_steps: 8
    per_step_prompts: 8
    num_generations: 4
    max_completion_length: 100
    learning_rate: 0.002
    beta: 0.04
    eval_every: 8
    save_every: 4
  - name: lora_sft
    type: sft
    model_config: {a.source}/recipes/tiny_model.json
    task: addition_cot
    lora_r: 8
    lora_target_modules: [q_proj, kv_b_proj, o_proj, gate_proj, up_proj, down_proj]
    max_length: 128
    per_device_train_batch_size: 8
    max_steps: 10
    learning_rate: 0.01
    eval_every: 10
    save_every: 10
  - name: merged_sft
    type: sft
    model_dir: stage:lora_sft
    task: addition_cot
    max_length: 128
    per_device_train_batch_size: 8
    max_steps: 2
    learning_rate: 0.001
    save_every: 2
"""
recipe = os.path.join(a.workdir, "r.yaml")
open(recipe, "w").write(RECIPE)


check = Checks()


full = os.path.join(a.workdir, "full")
train(a.grpo, recipe, full)
rl = os.path.join(full, "lora_rl")
final = os.path.join(rl, "checkpoint-8")
cfg = json.load(open(os.path.join(final, "adapter_config.json")))
base = json.load(open(os.path.join(full, "pipeline.json")))["stages"][0]["output"]
check(cfg["base_model_name_or_path"] == os.path.abspath(base) and not os.path.exists(os.path.join(final, "model.safetensors")),
      f"the LoRA stage's checkpoint is an adapter over {os.path.basename(cfg['base_model_name_or_path'])}")
m = [x for x in metrics(os.path.join(rl, "metrics.jsonl")) if "loss" in x]
diff = max(x["rollout_logprob_diff"] for x in m)
check(diff < 1e-5, f"engine log-probs equal the training forward's with adapters: rollout_logprob_diff <= {diff:.1e}")
kls = [x["kl"] for x in m]
check(kls[0] < 1e-6 and kls[-1] > 1e-5, f"KL to the base (adapters off): {kls[0]:.1e} at step 1, {kls[-1]:.1e} at step 8")
adapter = tensors(os.path.join(final, "adapter_model.safetensors"))
check(len(adapter) > 0 and all(any(v) for k, v in adapter.items() if "lora_B" in k),
      f"every one of {sum('lora_B' in k for k in adapter)} lora_B tensors moved from zero")

cut = os.path.join(a.workdir, "cut")
kill_when(a.grpo, recipe, cut, os.path.join(cut, "lora_rl", "metrics.jsonl"), 5)
train(a.grpo, recipe, cut, "--resume")
same = tensors(os.path.join(cut, "lora_rl", "checkpoint-8", "adapter_model.safetensors")) == adapter
check(same, "killed at step 5 of the LoRA stage and resumed: the final adapter is bit-identical")

sft = os.path.join(full, "lora_sft")
sft_final = os.path.join(sft, "checkpoint-10")
scfg = json.load(open(os.path.join(sft_final, "adapter_config.json")))
check(scfg["base_model_name_or_path"] == "../base" and os.path.exists(os.path.join(sft, "base", "model.safetensors")),
      "a LoRA stage on a random base keeps the base beside its checkpoints (base/) and names it")
check(scfg.get("target_parameters") == ["gate_up_proj", "down_proj"] and sorted(scfg["target_modules"]) == ["kv_b_proj", "o_proj", "q_proj"],
      f"MLP names adapt the routed experts, as PEFT does: target_modules {scfg['target_modules']}, "
      f"target_parameters {scfg.get('target_parameters')}")
lora_loss = [x["eval_loss"] for x in metrics(os.path.join(sft, "metrics.jsonl")) if "eval_loss" in x]
merged_loss = [x["eval_loss"] for x in metrics(os.path.join(full, "merged_sft", "metrics.jsonl")) if "eval_loss" in x]
check(lora_loss[-1] < 0.95 * lora_loss[0] and abs(merged_loss[0] - lora_loss[-1]) < 1e-5,
      f"LoRA sft on a random base learns (held-out loss {lora_loss[0]:.3f} -> {lora_loss[-1]:.6f}) and a full sft stage "
      f"from its adapter starts from the merged model (held-out loss {merged_loss[0]:.6f} before training)")
bad = os.path.join(a.workdir, "bad.yaml")
open(bad, "w").write(f"type: sft\nmodel_config: {a.source}/recipes/tiny_model.json\ntask: addition_cot\n"
                     "lora_r: 4\nlora_target_modules: [gate_proj]\n")
r = subprocess.run([a.grpo, "train", bad, "--output", os.path.join(a.workdir, "bad")], capture_output=True, text=True)
check(r.returncode != 0 and "gate_proj and up_proj" in r.stderr, "gate_proj without up_proj is refused: " + r.stderr.strip()[-120:])
check.finish()

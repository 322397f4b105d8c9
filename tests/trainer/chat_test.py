"""prompt_format: chat end to end on the built-in tiny model with a recipe chat_template file:
an sft stage on prompt -> completion examples learns (held-out loss falls) and its checkpoint
carries the template (chat_template.jinja), which `grpo chat-template` and `grpo eval
--prompt-format chat` then use; an sft stage on multi-turn `messages` rows trains every assistant
turn; a grpo stage with chat prompts runs from the sft result; a prompt given as a conversation
without prompt_format chat is an error naming the row."""
import argparse
import json
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
template = os.path.join(a.source, "recipes", "chat_templates", "user_assistant.jinja")

conversations = os.path.join(a.workdir, "conversations.jsonl")
with open(conversations, "w") as f:
    for i in range(40):
        x, y = i % 7, i % 5
        f.write(json.dumps({"messages": [
            {"role": "system", "content": "Add."},
            {"role": "user", "content": f"{x}+{y}"}, {"role": "assistant", "content": str(x + y)},
            {"role": "user", "content": f"{y}+{x}"}, {"role": "assistant", "content": str(x + y)}]}) + "\n")

RECIPE = f"""model_config: {a.source}/recipes/tiny_model.json
tokenizer: builtin:bytes
prompt_format: chat
chat_template: {template}
system_prompt: "Solve it."
train_size: 400
eval_size: 32
rewards: math
seed: 0
stages:
  - name: cold_start
    type: sft
    task: addition_cot
    max_length: 128
    per_device_train_batch_size: 4
    max_steps: 30
    learning_rate: 0.003
    eval_every: 30
    save_every: 30
  - name: dialogue
    type: sft
    model_dir: stage:cold_start
    task: jsonl
    train_file: {conversations}
    max_steps: 3
    per_device_train_batch_size: 4
    save_every: 3
  - name: reasoning
    model_dir: stage:cold_start
    task: addition
    max_steps: 2
    per_step_prompts: 4
    num_generations: 2
    max_completion_length: 16
    save_every: 2
"""
recipe = os.path.join(a.workdir, "r.yaml")
open(recipe, "w").write(RECIPE)
out = os.path.join(a.workdir, "out")
r = subprocess.run([a.grpo, "train", recipe, "--output", out], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(f"grpo train failed:\n{r.stderr[-3000:]}")
if "final reply only" in r.stderr:
    sys.exit("the user/assistant template renders incrementally; every turn should be trained")
pipe = json.load(open(os.path.join(out, "pipeline.json")))
if [s["status"] for s in pipe["stages"]] != ["done"] * 3:
    sys.exit(f"stages: {pipe['stages']}")
m = [json.loads(l) for l in open(os.path.join(out, "cold_start", "metrics.jsonl")) if l.strip()]
losses = [x["eval_loss"] for x in m if "eval_loss" in x]
print(f"chat sft: held-out loss {losses[0]:.3f} -> {losses[-1]:.3f}")
if not losses[-1] < 0.7 * losses[0]:
    sys.exit("the chat sft stage did not learn")
ckpt = pipe["stages"][0]["output"]
if open(os.path.join(ckpt, "chat_template.jinja")).read() != open(template).read():
    sys.exit("the checkpoint does not carry the recipe's chat template")

# The checkpoint renders prompts as the stage did.
conv = os.path.join(a.workdir, "c.jsonl")
open(conv, "w").write(json.dumps([{"role": "system", "content": "Solve it."}, {"role": "user", "content": "12+30="}]) + "\n")
r = subprocess.run([a.grpo, "chat-template", "--model", ckpt, "--input", conv, "--add-generation-prompt"],
                   capture_output=True, text=True)
if r.returncode != 0 or json.loads(r.stdout) != "<s>Solve it.\nUser: 12+30=\nAssistant: ":
    sys.exit(f"grpo chat-template on the checkpoint: {r.returncode} {r.stdout!r} {r.stderr}")

# grpo eval with the chat format uses the same template.
bench = os.path.join(a.workdir, "bench.jsonl")
open(bench, "w").write("".join(json.dumps({"prompt": f"{x}+{y}=", "answer": str(x + y)}) + "\n" for x, y in [(12, 30), (45, 21)]))
r = subprocess.run([a.grpo, "eval", "--model", ckpt, "--benchmark", bench, "--prompt-format", "chat",
                    "--max-new-tokens", "48", "--samples-output", os.path.join(a.workdir, "s.jsonl")],
                   capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(f"grpo eval --prompt-format chat failed: {r.stderr[-2000:]}")
print("eval --prompt-format chat:", r.stdout.strip().splitlines()[-1])

# A conversation prompt needs prompt_format chat.
bad = os.path.join(a.workdir, "bad.yaml")
open(bad, "w").write(RECIPE.replace("prompt_format: chat\n", "").split("  - name: dialogue")[0]
                     .replace("task: addition_cot", f"task: jsonl\n    train_file: {conversations}"))
r = subprocess.run([a.grpo, "train", bad, "--output", os.path.join(a.workdir, "bad")], capture_output=True, text=True)
if r.returncode == 0 or "conversations.jsonl:1" not in r.stderr or "prompt_format: chat" not in r.stderr:
    sys.exit(f"a conversation without prompt_format chat: rc {r.returncode}, {r.stderr[-500:]}")
print("PASS")

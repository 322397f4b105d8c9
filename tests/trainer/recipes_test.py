"""The shipped GPU recipes (recipes/r1_zero_gsm8k.yaml, recipes/r1_zero_math.yaml, and the
multi-stage r1_gsm8k.yaml, r1_math.yaml and distill_qwen.yaml) run end to end as they are, on CPU
for two steps (or a few prompts) per stage, with only the models, sizes and filters replaced: a tiny random DeepSeek-V3-style
checkpoint with a byte-level BPE tokenizer.json trained here, and the real GSM8K and MATH-500 files
(a slice, in their own formats). Checks: the R1-Zero template, `math` + `format` rewards and eval run;
a GSM8K row without "####" is skipped and reported with its line; checkpoints are written.
Exits 77 (skipped) without the shared benchmark data."""
import argparse
import json
import os
import shutil
import subprocess
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--source", required=True)
ap.add_argument("--shared-data", required=True)
ap.add_argument("--workdir", required=True)
a = ap.parse_args()
bench = os.path.join(a.shared_data, "benchmarks")
if not os.path.exists(os.path.join(bench, "gsm8k_train.jsonl")):
    print("no shared benchmark data: skipped")
    sys.exit(77)
shutil.rmtree(a.workdir, ignore_errors=True)
data = os.path.join(a.workdir, "data")
os.makedirs(data)


def rows(name, n):
    with open(os.path.join(bench, name)) as f:
        return [json.loads(next(f)) for _ in range(n)]


gsm_train, gsm_test = rows("gsm8k_train.jsonl", 48), rows("gsm8k_test.jsonl", 8)
math500 = rows("math500_test.jsonl", 56)
with open(os.path.join(data, "gsm8k_train.jsonl"), "w") as f:
    for i, r in enumerate(gsm_train):
        if i == 5:  # line 6: an answer without its "#### N" line
            f.write(json.dumps({"question": r["question"], "answer": "no final answer here"}) + "\n")
        f.write(json.dumps(r) + "\n")
for name, rs in [("gsm8k_test.jsonl", gsm_test), ("math_train.jsonl", math500[:48]), ("math500_test.jsonl", math500[48:])]:
    with open(os.path.join(data, name), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rs)

# Tokenizer: byte-level BPE trained on the problems, <s> = 0, </s> = 1.
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
texts = [r["question"] for r in gsm_train] + [r["problem"] for r in math500]
tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>"],
                                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
model = os.path.join(a.workdir, "model")
config = json.load(open(os.path.join(a.source, "recipes", "tiny_model.json")))
config.update(vocab_size=tok.get_vocab_size(), bos_token_id=0, eos_token_id=1, max_position_embeddings=1024)
json.dump(config, open(os.path.join(a.workdir, "config.json"), "w"))
subprocess.run([a.grpo, "init", "--config", os.path.join(a.workdir, "config.json"), "--output", model], check=True,
               capture_output=True)
tok.save(os.path.join(model, "tokenizer.json"))

failures = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        failures.append(what)


overrides = {"model_dir": model, "device": "cpu", "bf16": "false", "max_steps": "2", "per_step_prompts": "4",
             "num_generations": "4", "max_completion_length": "16", "eval_every": "2", "save_every": "2"}
for name in ["r1_zero_gsm8k", "r1_zero_math"]:
    lines = []
    for line in open(os.path.join(a.source, "recipes", name + ".yaml")):
        key = line.split(":")[0].strip()
        if line.startswith("#") or not line.strip():
            continue
        if key in overrides:
            line = f"{key}: {overrides[key]}\n"
        elif key in ("train_file", "eval_file"):
            line = f"{key}: {os.path.join(data, line.split(':', 1)[1].split('/')[-1].strip())}\n"
        lines.append(line)
    recipe = os.path.join(a.workdir, name + ".yaml")
    open(recipe, "w").writelines(lines)
    out = os.path.join(a.workdir, name)
    r = subprocess.run([a.grpo, "train", recipe, "--output", out], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{name}: grpo train failed:\n{r.stderr}")
    ms = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    steps = [m for m in ms if "loss" in m]
    check(len(steps) == 2 and all("rewards/math/mean" in m and "rewards/format/mean" in m for m in steps)
          and "eval_accuracy" in steps[-1] and os.path.exists(os.path.join(out, "checkpoint-2", "model.safetensors")),
          f"{name}: 2 GRPO steps with math and format rewards, eval, checkpoint-2")
    if name == "r1_zero_gsm8k":
        check("1 row of" in r.stderr and "gsm8k_train.jsonl:6" in r.stderr and "####" in r.stderr,
              "the GSM8K row without '####' is reported with its line: " +
              next((l for l in r.stderr.splitlines() if "skipped" in l), "(no report)"))

# The multi-stage recipes: every stage runs (sft, grpo, rejection_sampling, reward_model, distill), with
# the checkpoints' paths, data files and sizes replaced, and the rejection filters opened (a random
# model is never right).
student = os.path.join(a.workdir, "student")
config.update(hidden_size=64, num_hidden_layers=2)
json.dump(config, open(os.path.join(a.workdir, "student.json"), "w"))
subprocess.run([a.grpo, "init", "--config", os.path.join(a.workdir, "student.json"), "--output", student], check=True,
               capture_output=True)
template = open(os.path.join(a.source, "recipes", "chat_templates", "user_assistant.jinja")).read()
for d in (model, student):
    tok.save(os.path.join(d, "tokenizer.json"))
    open(os.path.join(d, "chat_template.jinja"), "w").write(template)
    json.dump({"bos_token": "<s>", "eos_token": "</s>"}, open(os.path.join(d, "tokenizer_config.json"), "w"))
with open(os.path.join(data, "preferences.jsonl"), "w") as f:
    for r in gsm_train[:20]:
        f.write(json.dumps({"prompt": r["question"], "chosen": r["answer"], "rejected": "I do not know."}) + "\n")
small = ["max_steps=2", "per_step_prompts=4", "num_generations=2", "max_completion_length=16", "max_prompts=4",
         "num_samples=2", "num_train_epochs=1", "max_length=384", "per_device_train_batch_size=2", "device=cpu",
         "bf16=false", "eval_every=2", "save_every=2", "require_correct=false", "min_rewards={}", "language=\"\"",
         "min_language_consistency=0", "max_repeated_ngram_share=1", "reject_repeated_paragraphs=false", "drop_truncated=false"]
for name, stages in [("r1_gsm8k", ["cold_start", "reasoning", "rejection", "sft_from_base", "reward_model", "final"]),
                     ("r1_math", ["cold_start", "reasoning", "rejection", "sft_from_base", "reward_model", "final"]),
                     ("distill_qwen", ["teacher_samples", "student"])]:
    text = open(os.path.join(a.source, "recipes", name + ".yaml")).read()
    text = (text.replace("/path/to/base-checkpoint", model).replace("/path/to/teacher-checkpoint", model)
            .replace("/path/to/student-checkpoint", student).replace("data/", data + "/"))
    recipe = os.path.join(a.workdir, name + ".yaml")
    open(recipe, "w").write(text)
    out = os.path.join(a.workdir, name)
    r = subprocess.run([a.grpo, "train", recipe, "--output", out] + small, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{name}: grpo train failed:\n{r.stderr[-3000:]}")
    pipe = json.load(open(os.path.join(out, "pipeline.json")))
    done = [st["name"] for st in pipe["stages"] if st["status"] == "done"]
    check(done == stages, f"{name}: stages {' -> '.join(done)} done")

print("ok" if not failures else f"FAIL: {len(failures)} checks")
sys.exit(1 if failures else 0)

"""`grpo generate` and `grpo rollout-server` end to end, on a tiny checkpoint written by `grpo init`
with a byte-level BPE tokenizer trained here by HF `tokenizers`.

Checks:
  - log-probs written by `grpo generate` equal `grpo logprobs` on the same ids within 1e-4
    (fp32, CPU; 16 prompts of mixed lengths, G = 4, at --max-batch 1 and 64);
  - completion text equals HF tokenizers' decoding of completion_ids (text prompts);
  - `grpo generate --server` against `grpo rollout-server` gives the same completions as local;
  - bad input: a malformed prompts line names file:line, an over-long prompt names the prompt, and
    the server keeps serving; SIGTERM stops the server cleanly.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--workdir", required=True)
args = ap.parse_args()
os.makedirs(args.workdir, exist_ok=True)
W = args.workdir
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def grpo(*a, ok=True, **kw):
    r = subprocess.run([args.grpo, *a], capture_output=True, text=True, **kw)
    if ok and r.returncode != 0:
        print(r.stderr)
        raise SystemExit(f"grpo {' '.join(a)} failed")
    return r


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --- a tiny checkpoint with a tokenizer ---------------------------------------------------------
model = os.path.join(W, "model")
config = {"model_type": "deepseek_v3", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
          "moe_intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
          "q_lora_rank": 48, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
          "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
          "first_k_dense_replace": 1, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
          "max_position_embeddings": 160, "bos_token_id": 0, "eos_token_id": 1, "num_nextn_predict_layers": 0,
          "initializer_range": 0.2}
with open(os.path.join(W, "config.json"), "w") as f:
    json.dump(config, f)
grpo("init", "--config", os.path.join(W, "config.json"), "--output", model, "--seed", "5")

tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
corpus = ["The quick brown fox jumps over the lazy dog. " * 3, "What is 12 + 30? The answer is 42.",
          "def add(a, b):\n    return a + b\n", "Solve for x: 2x + 3 = 11, so x = 4."] * 20
tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>"],
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                    show_progress=False))
tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
tok.save(os.path.join(model, "tokenizer.json"))
assert tok.get_vocab_size() <= 320

# --- log-probs equal `grpo logprobs` --------------------------------------------------------------
prompts = os.path.join(W, "prompts_ids.jsonl")
with open(prompts, "w") as f:
    for i in range(16):
        f.write(json.dumps({"prompt_ids": [(13 * i + 7 * t) % 300 + 2 for t in range(1 + (i * 37) % 90)]}) + "\n")
for batch in ("1", "64"):
    out = os.path.join(W, f"gen_b{batch}.jsonl")
    grpo("generate", "--model", model, "--prompts", prompts, "--output", out, "-n", "4", "--max-new-tokens", "40",
         "--seed", "7", "--max-batch", batch, "--block-size", "8")
    rows = read_jsonl(out)
    check(len(rows) == 64 and [(r["prompt_index"], r["sample_index"]) for r in rows] ==
          [(p, s) for p in range(16) for s in range(4)], f"batch {batch}: 64 completions ordered by prompt and sample")
    check(not os.path.exists(out + ".partial"), f"batch {batch}: the .partial file is gone")
    pin = read_jsonl(prompts)
    lp_in = os.path.join(W, f"lp_in_b{batch}.jsonl")
    with open(lp_in, "w") as f:
        for r in rows:
            f.write(json.dumps({"prompt_ids": pin[r["prompt_index"]]["prompt_ids"],
                                "completion_ids": r["completion_ids"]}) + "\n")
    lp_out = os.path.join(W, f"lp_out_b{batch}.jsonl")
    grpo("logprobs", "--model", model, "--input", lp_in, "--output", lp_out)
    ref = read_jsonl(lp_out)
    worst = max(abs(a - b) for r, q in zip(rows, ref) for a, b in zip(r["logprobs"], q["logprobs"]))
    same_len = all(len(r["logprobs"]) == len(q["logprobs"]) == len(r["completion_ids"]) for r, q in zip(rows, ref))
    check(same_len and worst < 1e-4, f"batch {batch}: max |generate - logprobs| = {worst:.2e} < 1e-4")
    stops = sum(r["finish_reason"] == "stop" for r in rows)
    check(all(r["completion_ids"][-1] == 1 for r in rows if r["finish_reason"] == "stop") and
          all(len(r["completion_ids"]) == 40 for r in rows if r["finish_reason"] == "length"),
          f"batch {batch}: finish reasons agree with eos (1) and the length limit ({stops} stops)")
b1, b64 = read_jsonl(os.path.join(W, "gen_b1.jsonl")), read_jsonl(os.path.join(W, "gen_b64.jsonl"))
check([r["completion_ids"] for r in b1] == [r["completion_ids"] for r in b64],
      "batch 1 and batch 64 sample the same completions")

# --- text prompts: text is the tokenizer's decoding ------------------------------------------------
text_prompts = os.path.join(W, "prompts_text.jsonl")
with open(text_prompts, "w") as f:
    for p in ["What is 12 + 30?", "Solve for x: 2x + 3 = 11.", "def add(a, b):", "The quick brown fox"]:
        f.write(json.dumps({"prompt": p}) + "\n")
local_out = os.path.join(W, "text_local.jsonl")
grpo("generate", "--model", model, "--prompts", text_prompts, "--output", local_out, "-n", "3",
     "--max-new-tokens", "24", "--temperature", "0.9", "--top-p", "0.95", "--seed", "3")
rows = read_jsonl(local_out)
ok = all(r["completion"] == tok.decode([t for t in r["completion_ids"] if t != 1], skip_special_tokens=False)
         for r in rows)
check(ok and len(rows) == 12, "completion text equals tokenizers' decode of completion_ids")

# --- the server gives what local generation gives ---------------------------------------------------
port_file = os.path.join(W, "port")
if os.path.exists(port_file):
    os.remove(port_file)
server = subprocess.Popen([args.grpo, "rollout-server", "--model", model, "--port", "0", "--port-file", port_file],
                          stderr=subprocess.PIPE, text=True)
try:
    for _ in range(600):
        if os.path.exists(port_file) or server.poll() is not None:
            break
        time.sleep(0.05)
    check(os.path.exists(port_file), "rollout-server wrote its port")
    addr = "127.0.0.1:" + open(port_file).read().strip()
    remote_out = os.path.join(W, "text_remote.jsonl")
    grpo("generate", "--server", addr, "--prompts", text_prompts, "--output", remote_out, "-n", "3",
         "--max-new-tokens", "24", "--temperature", "0.9", "--top-p", "0.95", "--seed", "3")
    remote = read_jsonl(remote_out)
    same = [(r["completion_ids"], r["completion"], r["finish_reason"]) for r in remote] == \
           [(r["completion_ids"], r["completion"], r["finish_reason"]) for r in rows]
    close = max(abs(a - b) for r, q in zip(remote, rows) for a, b in zip(r["logprobs"], q["logprobs"])) < 1e-5
    check(same and close, "generate --server equals local generation")

    long_prompts = os.path.join(W, "prompts_long.jsonl")
    with open(long_prompts, "w") as f:
        f.write(json.dumps({"prompt_ids": [5, 6, 7]}) + "\n")
        f.write(json.dumps({"prompt_ids": [5] * 200}) + "\n")
    r = grpo("generate", "--server", addr, "--prompts", long_prompts, "--output", os.path.join(W, "x.jsonl"), ok=False)
    check(r.returncode == 1 and "prompt 1: prompt of 200 tokens does not fit the context of 160" in r.stderr,
          "an over-long prompt is refused naming it: " + r.stderr.strip())
    r = grpo("generate", "--server", addr, "--prompts", prompts, "--output", os.path.join(W, "y.jsonl"),
             "--max-new-tokens", "4", ok=False)
    check(r.returncode == 0 and len(read_jsonl(os.path.join(W, "y.jsonl"))) == 16, "the server keeps serving")
    r = grpo("generate", "--server", "127.0.0.1:1", "--prompts", prompts, "--output", os.path.join(W, "z.jsonl"),
             "--timeout", "2", ok=False)
    check(r.returncode == 1 and "127.0.0.1:1" in r.stderr, "no server: the error names the address: " + r.stderr.strip())
finally:
    server.send_signal(signal.SIGTERM)
    try:
        rc = server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        rc = None
check(rc == 0, f"rollout-server exits cleanly on SIGTERM (rc {rc})")

# --- a server killed mid-generation: a clear error, and only whole completions kept --------------------
port_file = os.path.join(W, "port2")
if os.path.exists(port_file):
    os.remove(port_file)
server = subprocess.Popen([args.grpo, "rollout-server", "--model", model, "--port", "0", "--port-file", port_file],
                          stderr=subprocess.DEVNULL)
for _ in range(600):
    if os.path.exists(port_file) or server.poll() is not None:
        break
    time.sleep(0.05)
addr = "127.0.0.1:" + open(port_file).read().strip()
out = os.path.join(W, "killed.jsonl")
for stale in (out, out + ".partial"):  # a previous run's files would look like progress
    if os.path.exists(stale):
        os.remove(stale)
gen = subprocess.Popen([args.grpo, "generate", "--server", addr, "--prompts", prompts, "--output", out, "-n", "64",
                        "--max-new-tokens", "40", "--ignore-eos"], stderr=subprocess.PIPE, text=True)
for _ in range(6000):  # until some completions have arrived (a loaded machine starts slowly)
    if (os.path.exists(out + ".partial") and os.path.getsize(out + ".partial") > 0) or gen.poll() is not None:
        break
    time.sleep(0.02)
server.kill()
server.wait()
err = gen.communicate(timeout=60)[1]
partial = read_jsonl(out + ".partial") if os.path.exists(out + ".partial") else []
check(gen.returncode == 1 and addr in err and "UNAVAILABLE" in err,
      "a server killed mid-generation: a clear error naming it: " + err.strip().splitlines()[-1][:200])
check(not os.path.exists(out), "a server killed mid-generation: no output reported complete")
whole = all(len(r["completion_ids"]) == 40 and len(r["logprobs"]) == 40 and r["finish_reason"] == "length" for r in partial)
check(0 < len(partial) < 16 * 64 and whole,
      f"a server killed mid-generation: the {len(partial)} completions kept are whole (40 tokens each)")

# --- malformed input names the line ------------------------------------------------------------------
bad = os.path.join(W, "bad.jsonl")
with open(bad, "w") as f:
    f.write(json.dumps({"prompt": "ok"}) + "\n{not json\n")
r = grpo("generate", "--model", model, "--prompts", bad, "--output", os.path.join(W, "b.jsonl"), ok=False)
check(r.returncode == 1 and "bad.jsonl:2: not valid JSON" in r.stderr, "malformed line named: " + r.stderr.strip())
with open(bad, "w") as f:
    f.write(json.dumps({"text": "no prompt field"}) + "\n")
r = grpo("generate", "--model", model, "--prompts", bad, "--output", os.path.join(W, "b.jsonl"), ok=False)
check(r.returncode == 1 and "bad.jsonl:1: expected a field 'prompt'" in r.stderr, "missing field named: " + r.stderr.strip())
r = grpo("generate", "--model", model, "--prompts", prompts, "--output", os.path.join(W, "b.jsonl"), "-n", "0", ok=False)
check(r.returncode == 1 and "-n must be at least 1" in r.stderr, "n = 0 refused: " + r.stderr.strip())
r = grpo("generate", "--model", model, "--prompts", prompts, "--output", os.path.join(W, "b.jsonl"),
         "--temperature", "-1", ok=False)
check(r.returncode == 1 and "--temperature" in r.stderr, "negative temperature refused: " + r.stderr.strip())

print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)

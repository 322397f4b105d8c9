#!/usr/bin/env python3
"""Encoding speed of `grpo tokenize` vs Hugging Face `tokenizers` on the same tokenizer.json and
corpus, measured in the same run. The tokenizer is the DeepSeek-V3-style one the parity test
trains; the corpus is the benchmark texts under --data (GSM8K, MATH-500, and HumanEval and MBPP
when present) repeated."""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "text"))
import tokenizer_parity_test as tp  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--workdir", default="/tmp/grpo_tok_bench")
ap.add_argument("--repeat", type=int, default=4)
ap.add_argument("--data", required=True, help="a folder with benchmarks/*.jsonl (GSM8K, MATH-500, ...)")
a = ap.parse_args()
os.makedirs(a.workdir, exist_ok=True)
texts, _ = tp.load_corpus(a.data)
texts = [t for t in texts if t] * a.repeat
total_bytes = sum(len(t.encode()) for t in texts)
print(f"corpus: {len(texts)} texts, {total_bytes / 1e6:.1f} MB")
rows = []
for kind in ["deepseek_v3", "qwen2"]:
    tok = tp.build(kind, texts[: len(texts) // a.repeat])
    path = os.path.join(a.workdir, f"{kind}.json")
    tok.save(path)
    inp = os.path.join(a.workdir, "corpus.jsonl")
    with open(inp, "w") as f:
        for t in texts:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    t0 = time.perf_counter()
    out = subprocess.run([a.grpo, "tokenize", "--tokenizer", path, "--input", inp, "--jsonl", "--no-special-tokens"],
                         check=True, capture_output=True, text=True).stdout
    g = time.perf_counter() - t0
    n_tokens = sum(len(l.split()) for l in out.split("\n"))
    t0 = time.perf_counter()
    for t in texts:
        tok.encode(t, add_special_tokens=False)
    h1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok.encode_batch(texts, add_special_tokens=False)
    hb = time.perf_counter() - t0
    rows.append((kind, n_tokens, g, h1, hb))
print("| tokenizer | tokens | grpo (1 thread, incl. load + I/O) | HF encode() loop | HF encode_batch (all cores) | grpo / HF encode() |")
print("|---|---|---|---|---|---|")
for kind, n, g, h1, hb in rows:
    print(f"| {kind} | {n} | {n / g / 1e6:.2f} M tok/s | {n / h1 / 1e6:.2f} M tok/s | {n / hb / 1e6:.2f} M tok/s | {h1 / g:.2f}x |")

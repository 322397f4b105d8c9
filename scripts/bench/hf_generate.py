#!/usr/bin/env python3
"""Baseline for bench_rollout: Hugging Face transformers generate() on the same checkpoint, greedy,
exactly --new-tokens per sequence. Decode rate = B * (N - 1) / (t(N new tokens) - t(1 new token)),
i.e. prefill excluded, as the grpo engine reports it. One JSON line per batch size."""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--dtype", default="float32")
ap.add_argument("--device", default="cpu")
ap.add_argument("--batches", default="1,16,64,256")
ap.add_argument("--prompt-len", type=int, default=128)
ap.add_argument("--new-tokens", type=int, default=128)
a = ap.parse_args()
dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").to(a.device).eval()
vocab = model.config.vocab_size
g = torch.Generator().manual_seed(0)


def run(B, new):
    ids = torch.randint(vocab, (B, a.prompt_len), generator=g).to(a.device)
    mask = torch.ones_like(ids)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    assert out.shape[1] == a.prompt_len + new, out.shape
    return time.perf_counter() - t0


for B in [int(x) for x in a.batches.split(",")]:
    run(B, 4)  # warm-up
    t1 = run(B, 1)
    tn = run(B, a.new_tokens)
    dt = max(tn - t1, 1e-9)
    print(json.dumps({"kind": "decode", "engine": "transformers generate()", "batch": B, "prompt": a.prompt_len,
                      "new": a.new_tokens, "decode_tok_s": B * (a.new_tokens - 1) / dt,
                      "ms_per_step": 1e3 * dt / (a.new_tokens - 1)}), flush=True)

#!/usr/bin/env python3
"""Reads the JSON lines of scripts/bench_gpu.sh and prints its one table: each training and decode
row with its fraction of the machine's measured limit and its ratio to transformers measured in the
same run (the same shape, batch and context)."""
import json
import sys

checks, train, decode, device = [], [], [], None
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    {"check": checks, "train": train, "decode": decode}.get(r["kind"], []).append(r)
    if r["kind"] == "device":
        device = r

peak = max((r.get("peak_tflops", 0) for r in train), default=0)
bw = device["copy_bandwidth"] if device else 0
print("Correctness: " + "; ".join(f"{c['suite']}: {c['passed']} passed, {'ok' if c['ok'] else 'FAILED'}" for c in checks))
print(f"Machine limits measured in this run: bf16 matrix products {peak:.0f} TFLOP/s, device copy "
      f"{bw / 1e9:.0f} GB/s (read + write)")
print()
print("| work | config | batch | context | tokens/s | fraction of the limit | baseline (transformers) tokens/s | ratio |")
print("|---|---|---|---|---|---|---|---|")
hf_train = {(r["batch"], r["seq"]): r["tokens_s"] for r in train if r["engine"] == "transformers"}
for r in train:
    if r["engine"] == "transformers":
        continue
    base = hf_train.get((r["batch"], r["seq"]))
    print(f"| train fwd+bwd | V2-Lite shape, {r['layers']} layers, bf16 | {r['batch']} | {r['seq']} | {r['tokens_s']:.0f} | "
          f"MFU {100 * r['tflops'] / r['peak_tflops']:.1f}% ({r['tflops']:.0f} TFLOP/s) | "
          + (f"{base:.0f} | {r['tokens_s'] / base:.2f}x |" if base else "- | - |"))
hf_decode = {(r["batch"], r["prompt"]): r["decode_tok_s"] for r in decode if r["engine"].startswith("transformers")}
for r in decode:
    if r["engine"] != "grpo":
        continue
    base = hf_decode.get((r["batch"], r["prompt"]))
    print(f"| decode | V2-Lite shape, bf16, CUDA graphs | {r['batch']} | {r['prompt']} + {r['new']} | {r['decode_tok_s']:.0f} | "
          f"roofline {100 * r['roofline']:.1f}% | " + (f"{base:.0f} | {r['decode_tok_s'] / base:.2f}x |" if base else "- | - |"))
gathered = {(r["batch"], r["prompt"]): r for r in decode if r["engine"] == "grpo-gathered"}
if gathered:
    print()
    print("Decode attention: the paged MLA kernel against the same engine attending over a gathered copy of the cache")
    print()
    print("| batch | context | paged ms/step | gathered ms/step | paged tokens/s | gathered tokens/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in decode:
        g = gathered.get((r["batch"], r["prompt"])) if r["engine"] == "grpo" else None
        if g:
            print(f"| {r['batch']} | {r['prompt']} + {r['new']} | {r['ms_per_step']:.2f} | {g['ms_per_step']:.2f} | "
                  f"{r['decode_tok_s']:.0f} | {g['decode_tok_s']:.0f} | {r['decode_tok_s'] / g['decode_tok_s']:.2f}x |")
fp8 = {(r["batch"], r["prompt"]): r for r in decode if r["engine"] == "grpo-fp8"}
if fp8:
    print()
    print("Decode with FP8 weights (e4m3; 128 x 128 block scales, per-row for the routed experts) against bf16 in the same")
    print("run; log-prob drift: |engine - bf16 training forward| over the first 8 completions of each row")
    print()
    print("| batch | context | bf16 ms/step | fp8 ms/step | speed-up | fp8 roofline (fp8 bytes) | bf16 drift mean / max | fp8 drift mean / max |")
    print("|---|---|---|---|---|---|---|---|")
    for r in decode:
        f = fp8.get((r["batch"], r["prompt"])) if r["engine"] == "grpo" else None
        if f:
            print(f"| {r['batch']} | {r['prompt']} + {r['new']} | {r['ms_per_step']:.2f} | {f['ms_per_step']:.2f} | "
                  f"{r['ms_per_step'] / f['ms_per_step']:.2f}x | {100 * f['roofline']:.1f}% | "
                  f"{r.get('logprob_diff_mean', 0):.4f} / {r['logprob_diff_max']:.3f} | "
                  f"{f.get('logprob_diff_mean', 0):.4f} / {f['logprob_diff_max']:.3f} |")

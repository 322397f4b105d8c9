#!/usr/bin/env python3
"""Reads the JSON lines of bench_rollout and hf_generate.py and prints a markdown table with each
row's decode rate as a multiple of transformers' at the same batch size."""
import json
import sys

rows, device = [], None
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    if r["kind"] == "device":
        device = r
    else:
        rows.append(r)
hf = {r["batch"]: r["decode_tok_s"] for r in rows if r["engine"].startswith("transformers")}
if device:
    print(f"device {device['device']}, {device['dtype']}, {device['params'] / 1e6:.1f}M parameters, "
          f"measured copy bandwidth {device['copy_bandwidth'] / 1e9:.1f} GB/s")
print()
print("| engine | batch | prompt + new | decode tokens/s | ms/step | x transformers | memory roofline |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    ratio = f"{r['decode_tok_s'] / hf[r['batch']]:.2f}x" if r["batch"] in hf else "-"
    roof = f"{100 * r['roofline']:.1f}%" if "roofline" in r else "-"
    print(f"| {r['engine']} | {r['batch']} | {r['prompt']} + {r['new']} | {r['decode_tok_s']:.0f} | "
          f"{r['ms_per_step']:.2f} | {ratio} | {roof} |")

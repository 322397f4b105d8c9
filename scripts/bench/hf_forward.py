#!/usr/bin/env python3
"""Baseline for bench_forward: the same forward+backward step with Hugging Face transformers on the
same config (random weights), printed as a row of the same table."""
import argparse
import json
import sys
import time

import torch
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--layers", type=int, default=0)
ap.add_argument("--dtype", default="float32")
ap.add_argument("--device", default="cpu")
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--label", default="transformers")
ap.add_argument("--json", action="store_true", help="print a JSON line instead of a table row")
a = ap.parse_args()
cfg = json.load(open(a.config))
if a.layers:
    cfg["num_hidden_layers"] = a.layers
kind = cfg.pop("model_type")
cfg["num_nextn_predict_layers"] = 0
dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
Config, Model = (DeepseekV3Config, DeepseekV3ForCausalLM) if kind == "deepseek_v3" else (DeepseekV2Config, DeepseekV2ForCausalLM)
torch.set_default_dtype(dtype)
with torch.device(a.device):
    model = Model(Config(**cfg, attn_implementation="sdpa"))
torch.set_default_dtype(torch.float32)
model.train()
n = sum(p.numel() for p in model.parameters())
torch.manual_seed(0)
ids = torch.randint(cfg["vocab_size"], (a.batch, a.seq), device=a.device)


def step():
    logits = model(ids[:, :-1]).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    model.zero_grad(set_to_none=True)


for _ in range(a.warmup):
    step()
if a.device.startswith("cuda"):
    torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(a.iters):
    step()
if a.device.startswith("cuda"):
    torch.cuda.synchronize()
sec = time.perf_counter() - t0
tps = a.batch * (a.seq - 1) * a.iters / sec
if a.json:
    print(json.dumps({"kind": "train", "engine": a.label, "layers": cfg["num_hidden_layers"], "batch": a.batch,
                      "seq": a.seq, "tokens_s": round(tps, 1)}))
    sys.exit(0)
print(f"| {a.label} | {a.device} | {a.dtype} | {cfg['num_hidden_layers']} | {n / 1e6:.1f}M | {a.batch} x {a.seq} | {tps:.0f} | - | - |")

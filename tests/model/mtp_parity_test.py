#!/usr/bin/env python3
"""Parity of grpo's multi-token prediction (DeepSeek-V3's MTP module) with a plain PyTorch forward.

transformers builds DeepSeek-V3 without its MTP module, so the reference is assembled from
transformers' own parts: the main model gives the final-norm hidden states h; module 1 combines h at
position t with the embedding of token t + 1, eh_proj([enorm(embed(t + 1)); hnorm(h_t)]), and runs
one DeepSeek-V3 decoder layer (MLA + routed experts) over it, then shared_head.norm and
shared_head.head. That decoder layer and head are a one-layer transformers DeepseekV3ForCausalLM
(its layer 0 MoE, its final norm and lm_head standing for the shared head) fed the combined vectors
as inputs_embeds. Its weights go into the checkpoint as model.layers.<num_hidden_layers>.*, the
names DeepSeek-V3 ships.

Checks, fp32 on CPU, tolerance 1e-4: `grpo logprobs --mtp` gives the reference's log p of every
completion token the module predicts (two places ahead), and the main log-probs stay transformers'.
A module reading the wrong token (t instead of t + 1), the hidden states before the final norm, the
concatenation in the other order, or no hnorm moves them by far more (the script prints by how much).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_test import V3, VOCAB, build, compare, hf_logprobs, make_rows  # noqa: E402

TOL = 1e-4


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def add_mtp_module(d, cfg, main, seed):
    """Writes MTP module 1 into checkpoint d (and a final norm weight other than ones, so that the
    hidden states before and after it differ in more than scale); returns (block, enorm, hnorm, eh_proj)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        main.model.norm.weight.uniform_(0.5, 1.5)
    block = DeepseekV3ForCausalLM(DeepseekV3Config(**dict(cfg, num_hidden_layers=1, first_k_dense_replace=0))).eval()
    with torch.no_grad():
        for name, buf in block.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(0.0, 0.3)
        block.model.norm.weight.uniform_(0.5, 1.5)
    H = cfg["hidden_size"]
    enorm = torch.empty(H).uniform_(0.5, 1.5)
    hnorm = torch.empty(H).uniform_(0.5, 1.5)
    eh_proj = torch.randn(H, 2 * H) * 0.1
    L = cfg["num_hidden_layers"]
    tensors = load_file(os.path.join(d, "model.safetensors"))
    tensors["model.norm.weight"] = main.model.norm.weight.contiguous()
    prefix = f"model.layers.{L}."
    for name, t in block.state_dict().items():
        if name.startswith("model.layers.0."):
            tensors[prefix + name[len("model.layers.0."):]] = t.contiguous()
    tensors[prefix + "embed_tokens.weight"] = block.model.embed_tokens.weight.contiguous()
    tensors[prefix + "shared_head.norm.weight"] = block.model.norm.weight.contiguous()
    tensors[prefix + "shared_head.head.weight"] = block.lm_head.weight.contiguous()
    tensors[prefix + "enorm.weight"] = enorm
    tensors[prefix + "hnorm.weight"] = hnorm
    tensors[prefix + "eh_proj.weight"] = eh_proj
    # transformers keeps experts fused; grpo reads both layouts.
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    return block, enorm, hnorm, eh_proj


@torch.no_grad()
def reference_mtp(main, block, enorm, hnorm, eh_proj, rows, eps, variant=""):
    """log p of completion token j from position P + j - 2 (module 1: two places ahead)."""
    out = []
    for r in rows:
        seq = r["prompt_ids"] + r["completion_ids"][:-1]  # the inputs, as grpo forms them
        ids = torch.tensor([seq])
        hidden = main.model(ids).last_hidden_state
        if variant == "before_final_norm":
            seen = []
            hook = main.model.norm.register_forward_hook(lambda m, i, o: seen.append(i[0]))
            main.model(ids)
            hook.remove()
            hidden = seen[0]
        nxt = torch.tensor([seq[1:] + [0]]) if variant != "same_token" else ids
        e = rms_norm(block.model.embed_tokens(nxt), enorm, eps)
        h = hidden if variant == "no_hnorm" else rms_norm(hidden, hnorm, eps)
        x = torch.cat([h, e] if variant == "swapped" else [e, h], -1) @ eh_proj.T
        lp = torch.log_softmax(block(inputs_embeds=x).logits[0].float(), -1)
        P, C = len(r["prompt_ids"]), len(r["completion_ids"])
        out.append([lp[P + j - 2, r["completion_ids"][j]].item() for j in range(max(0, 2 - P), C)])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    torch.set_grad_enabled(False)
    d = os.path.join(a.workdir, "v3_mtp")
    main_model = build("v3", V3, d, seed=5)
    block, enorm, hnorm, eh_proj = add_mtp_module(d, V3, main_model, seed=6)
    rows = make_rows(1)
    rows += [{"prompt_ids": [17], "completion_ids": [3, 4, 5, 6]},  # one prompt token: the first has no prediction
             {"prompt_ids": [8, 9], "completion_ids": [1]}]
    inp, out = os.path.join(a.workdir, "in.jsonl"), os.path.join(a.workdir, "out.jsonl")
    with open(inp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    # A small batch budget pads sequences of different lengths into shared batches.
    subprocess.run([a.grpo, "logprobs", "--model", d, "--input", inp, "--output", out, "--batch-tokens", "96",
                    "--mtp"], check=True)
    got = [json.loads(l) for l in open(out)]
    ok = compare("main log-probs with the MTP module present", [g["logprobs"] for g in got],
                 hf_logprobs(main_model, rows))
    ours = [g["mtp_logprobs"][0] for g in got]
    eps = V3.get("rms_norm_eps", 1e-6)
    ok &= compare("MTP module 1 log-probs", ours, reference_mtp(main_model, block, enorm, hnorm, eh_proj, rows, eps))
    for variant in ["same_token", "before_final_norm", "swapped", "no_hnorm"]:
        wrong = reference_mtp(main_model, block, enorm, hnorm, eh_proj, rows, eps, variant)
        gap = max(abs(x - y) for a_, b_ in zip(ours, wrong) for x, y in zip(a_, b_))
        print(f"{'PASS' if gap > 100 * TOL else 'FAIL'} a module built as '{variant}' would differ by {gap:.3f}")
        ok &= gap > 100 * TOL
    print("mtp parity:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Parity of grpo's DeepSeek-V2/V3 policy with Hugging Face transformers (fp32, CPU).

Builds tiny random models with transformers, saves them as HF checkpoints and checks:
  1. `grpo logprobs` on those checkpoints equals transformers' log-probs within 1e-4:
     - DeepseekV3: sigmoid scoring, noaux_tc with n_group > 1 and a non-zero correction bias,
       q_lora, YaRN (positions past original_max_position_embeddings), a dense first layer;
     - DeepseekV2: softmax, greedy, no q_lora, two shared experts, saved in shards;
     - DeepseekV2: group_limited_greedy and YaRN with mscale 0.707 (DeepSeek-V2's own settings);
  2. an FP8 (F8_E4M3 + 128x128 weight_scale_inv) copy of the V3 checkpoint gives transformers'
     log-probs on the dequantised weights;
  3. in bf16, grpo is no farther from transformers' fp32 log-probs than transformers' own bf16 is
     (see bf16_check), on the V3 model and on one where routing cannot flip;
  4. checkpoints written by `grpo init` load in transformers with no missing or unexpected
     weights and give the same log-probs as `grpo logprobs`.
Weights are drawn with a large std so that outputs are far from uniform: a wrong routing, RoPE
layout or scale moves log-probs by much more than the tolerance (the script prints the spread).
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config,
                          DeepseekV3ForCausalLM)

TOL = 1e-4
VOCAB = 300

V3 = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=48,
          kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
          n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4, topk_group=2,
          first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
          max_position_embeddings=256, initializer_range=0.25, num_nextn_predict_layers=1,
          rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
                        "rope_theta": 10000.0})
# Top-4 of 4 experts in one group: routing cannot change, whatever the rounding.
V3_ALL_EXPERTS = dict(V3, n_routed_experts=4, num_experts_per_tok=4, n_group=1, topk_group=1)
V2 = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
          num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=None,
          kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
          n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=2, first_k_dense_replace=1,
          topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0,
          max_position_embeddings=256, initializer_range=0.25)
V2_GROUPED = dict(V2, topk_method="group_limited_greedy", n_group=4, topk_group=2,
                  routed_scaling_factor=16.0,
                  rope_scaling={"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
                                "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                                "mscale_all_dim": 0.707, "rope_theta": 10000.0})


def build(kind, cfg, out_dir, seed, shard=None):
    torch.manual_seed(seed)
    config = (DeepseekV3Config if kind == "v3" else DeepseekV2Config)(**cfg)
    model = (DeepseekV3ForCausalLM if kind == "v3" else DeepseekV2ForCausalLM)(config).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.uniform_(0.0, 0.3)  # changes which experts win, not their weights
    model.save_pretrained(out_dir)
    return model


def reshard(d, n):
    """Splits model.safetensors into n shards plus model.safetensors.index.json (HF's layout)."""
    tensors = load_file(os.path.join(d, "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for s in range(n):
        fname = f"model-{s + 1:05d}-of-{n:05d}.safetensors"
        part = {k: tensors[k] for k in names[s::n]}
        save_file(part, os.path.join(d, fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    os.remove(os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                   "weight_map": weight_map}, f)


def make_rows(seed, n=14, max_prompt=24, max_completion=20):
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        p = [rnd.randrange(VOCAB) for _ in range(rnd.randint(1, max_prompt))]
        c = [rnd.randrange(VOCAB) for _ in range(0 if i == 3 else rnd.randint(1, max_completion))]
        rows.append({"prompt_ids": p, "completion_ids": c})
    return rows


@torch.no_grad()
def hf_logprobs(model, rows):
    out = []
    for r in rows:
        ids = torch.tensor([r["prompt_ids"] + r["completion_ids"]])
        lp = torch.log_softmax(model(ids).logits[0].float(), -1)
        P = len(r["prompt_ids"])
        out.append([lp[P - 1 + j, t].item() for j, t in enumerate(r["completion_ids"])])
    return out


def grpo_logprobs(grpo, model_dir, rows, workdir, tag, extra=()):
    inp = os.path.join(workdir, f"{tag}.in.jsonl")
    out = os.path.join(workdir, f"{tag}.out.jsonl")
    with open(inp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    # A small batch budget makes grpo pad sequences of different lengths into shared batches.
    subprocess.run([grpo, "logprobs", "--model", model_dir, "--input", inp, "--output", out,
                    "--batch-tokens", "96", *extra], check=True)
    with open(out) as f:
        return [json.loads(l)["logprobs"] for l in f]


def compare(name, ours, ref, tol=TOL):
    assert len(ours) == len(ref), f"{name}: {len(ours)} rows vs {len(ref)}"
    worst, flat = 0.0, []
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert len(a) == len(b), f"{name}: row {i}: {len(a)} log-probs vs {len(b)}"
        for x, y in zip(a, b):
            worst = max(worst, abs(x - y))
            flat.append(y)
    spread = torch.tensor(flat).std().item()
    ok = worst <= tol
    print(f"{'PASS' if ok else 'FAIL'} {name}: max |grpo - transformers| = {worst:.2e} "
          f"(tol {tol:g}) over {len(flat)} tokens; reference log-prob std {spread:.2f}")
    return ok


def routed_experts(model, rows):
    """The experts each MoE layer chose for every token, (layers, tokens, k) sorted, per row."""
    record, hooks = [], []
    for layer in model.model.layers:
        if hasattr(layer.mlp, "gate"):
            hooks.append(layer.mlp.gate.register_forward_hook(
                lambda m, i, o: record.append(o[2].sort(-1).values)))
    out = []
    for r in rows:
        if not hooks:  # a dense model
            break
        record.clear()
        model(torch.tensor([r["prompt_ids"] + r["completion_ids"]]))
        out.append(torch.stack(record))
    for h in hooks:
        h.remove()
    return out


def bf16_check(a, tag, d, rows, model32, ref, no_flips=False):
    """grpo and transformers, both in bf16, against transformers in fp32 (`ref`).

    bf16 keeps 8 significant bits, so on these deliberately peaked models each bf16 run sits about
    0.05-0.2 nats from fp32 per token, and a token whose router scores are near a tie picks other
    experts (transformers bf16 vs fp32 routing agreement is printed). Which tokens flip depends on
    rounding order, so the two bf16 runs are not compared token by token where routing can flip.
    What is asserted: grpo's bf16 is no farther from fp32 than transformers' bf16 is (mean and
    median per token, 25% margin), and where routing cannot flip, also the worst token, and the two
    bf16 runs are within a quarter of that bf16 error of each other (same precision policy: fp32
    RMSNorm statistics, softmax, router and log-softmax).
    """
    import itertools
    model16 = type(model32).from_pretrained(d, dtype=torch.bfloat16).eval()
    flat = lambda rows_: torch.tensor(list(itertools.chain(*rows_)), dtype=torch.float64)
    R = flat(ref)
    H = flat(hf_logprobs(model16, rows))
    O = flat(grpo_logprobs(a.grpo, d, rows, a.workdir, tag + "_bf16", ["--dtype", "bfloat16"]))
    e_hf, e_ours, e_pair = (H - R).abs(), (O - R).abs(), (O - H).abs()
    r32, r16 = routed_experts(model32, rows), routed_experts(model16, rows)
    same = sum((x == y).all(-1).sum().item() for x, y in zip(r32, r16))
    total = sum(x.shape[0] * x.shape[1] for x in r32)
    checks = [("mean", e_ours.mean() <= 1.25 * e_hf.mean()), ("median", e_ours.median() <= 1.25 * e_hf.median())]
    if no_flips:
        checks += [("max", e_ours.max() <= 1.25 * e_hf.max()),
                   ("grpo vs transformers mean", e_pair.mean() <= 0.25 * e_hf.mean())]
    ok = all(c for _, c in checks)
    print(f"{'PASS' if ok else 'FAIL'} {tag} bf16 vs fp32, per token mean/median/max: grpo "
          f"{e_ours.mean():.3g}/{e_ours.median():.3g}/{e_ours.max():.3g}, transformers "
          f"{e_hf.mean():.3g}/{e_hf.median():.3g}/{e_hf.max():.3g}; grpo vs transformers (both bf16) "
          f"{e_pair.mean():.3g}/{e_pair.median():.3g}/{e_pair.max():.3g}; transformers routing bf16 vs fp32: "
          f"{same}/{total} (token, layer) pairs pick the same experts"
          + ("" if ok else "; failed: " + ", ".join(n for n, c in checks if not c)))
    return ok


def fp8_copy(src_dir, dst_dir, block=128):
    """Quantises every 2-D projection weight to F8_E4M3 with per-block scales (DeepSeek-V3's
    layout: `<name>_scale_inv`, one fp32 scale per block) and returns the dequantised weights."""
    os.makedirs(dst_dir, exist_ok=True)
    tensors = load_file(os.path.join(src_dir, "model.safetensors"))
    out, deq = {}, {}
    for name, w in tensors.items():
        if w.dim() == 2 and name.endswith("proj.weight"):
            r, c = w.shape
            br, bc = (r + block - 1) // block, (c + block - 1) // block
            pad = torch.zeros(br * block, bc * block)
            pad[:r, :c] = w
            blocks = pad.view(br, block, bc, block)
            scale = blocks.abs().amax(dim=(1, 3)) / 448.0  # e4m3 max
            q = (blocks / scale[:, None, :, None]).view(br * block, bc * block)[:r, :c].to(torch.float8_e4m3fn)
            full = scale.repeat_interleave(block, 0)[:r].repeat_interleave(block, 1)[:, :c]
            out[name] = q.contiguous()
            out[name + "_scale_inv"] = scale.float().contiguous()
            deq[name] = q.float() * full
        else:
            out[name] = w
    save_file(out, os.path.join(dst_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": [block, block]}
    with open(os.path.join(dst_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return deq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    torch.set_grad_enabled(False)
    ok = True
    rows = make_rows(0)
    rows += [{"prompt_ids": [i % VOCAB for i in range(7, 7 + 40)], "completion_ids": [5, 6, 7, 8, 9, 10]}]

    for tag, kind, cfg, shard in [("v3", "v3", V3, None), ("v2", "v2", V2, True),
                                  ("v2_grouped_yarn", "v2", V2_GROUPED, None)]:
        d = os.path.join(a.workdir, tag)
        model = build(kind, cfg, d, seed=len(tag))
        if shard:
            reshard(d, 3)
        ref = hf_logprobs(model, rows)
        ok &= compare(f"{tag} logprobs", grpo_logprobs(a.grpo, d, rows, a.workdir, tag), ref)
        if tag == "v3":
            # FP8 block-scaled copy vs transformers on the dequantised weights.
            deq = fp8_copy(d, d + "_fp8")
            # Per-expert names in the file map to transformers' fused expert tensors; rebuild a
            # state dict with the dequantised weights through transformers' own loader.
            tmp = d + "_deq"
            shutil.copytree(d, tmp)
            tensors = load_file(os.path.join(d, "model.safetensors"))
            tensors.update(deq)
            save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            qmodel = DeepseekV3ForCausalLM.from_pretrained(tmp).eval()
            ok &= compare("v3 fp8 (128x128 block scales) logprobs",
                          grpo_logprobs(a.grpo, d + "_fp8", rows, a.workdir, "v3_fp8"), hf_logprobs(qmodel, rows))
            ok &= bf16_check(a, "v3", d, rows, model, ref)

    # bf16 where routing cannot flip (every token uses all experts): only rounding differs.
    d = os.path.join(a.workdir, "v3_all_experts")
    model = build("v3", V3_ALL_EXPERTS, d, seed=2)
    ok &= bf16_check(a, "v3_all_experts", d, rows, model, hf_logprobs(model, rows), no_flips=True)

    # Checkpoints grpo writes load in transformers and give the same log-probs.
    for tag, kind, cfg in [("init_v3", "v3", V3), ("init_v2", "v2", V2)]:
        cfg_path = os.path.join(a.workdir, f"{tag}.config.json")
        c = dict(cfg, model_type="deepseek_v3" if kind == "v3" else "deepseek_v2")
        if "rope_scaling" in c:
            c["rope_scaling"] = dict(c["rope_scaling"])
        with open(cfg_path, "w") as f:
            json.dump(c, f)
        d = os.path.join(a.workdir, tag)
        subprocess.run([a.grpo, "init", "--config", cfg_path, "--output", d, "--seed", "11"], check=True)
        cls = DeepseekV3ForCausalLM if kind == "v3" else DeepseekV2ForCausalLM
        model, info = cls.from_pretrained(d, output_loading_info=True)
        model.eval()
        missing = info["missing_keys"]
        unexpected = [k for k in info["unexpected_keys"] if ".layers.3." not in k]  # MTP: transformers ignores it
        if missing or unexpected or info.get("mismatched_keys"):
            print(f"FAIL {tag}: transformers reports missing={missing} unexpected={unexpected} "
                  f"mismatched={info.get('mismatched_keys')}")
            ok = False
        # Weights through transformers equal the file (no silent re-initialisation).
        file_t = load_file(os.path.join(d, "model.safetensors"))
        emb = model.model.embed_tokens.weight
        if not torch.equal(emb, file_t["model.embed_tokens.weight"]):
            print(f"FAIL {tag}: embed_tokens differs after loading in transformers")
            ok = False
        ok &= compare(f"{tag}: grpo-written checkpoint in transformers",
                      grpo_logprobs(a.grpo, d, rows, a.workdir, tag), hf_logprobs(model, rows))
    print("parity:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

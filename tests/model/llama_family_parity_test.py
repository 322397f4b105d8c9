#!/usr/bin/env python3
"""Parity of grpo's Llama-family models (qwen2, llama, qwen3, qwen3_moe) with transformers (CPU).

Tiny random checkpoints written by transformers, with every feature that changes the math switched
on somewhere: grouped-query attention (4 query heads on 2 key/value heads, and on 1), Qwen2's q/k/v
biases, Llama's attention_bias (o_proj too), head_dim unlike hidden_size / heads, Qwen3's q/k
RMSNorm, tied embeddings, Llama 3 and YaRN RoPE scaling at positions past
original_max_position_embeddings, Qwen3-MoE softmax top-k routing with norm_topk_prob and
mlp_only_layers, a sharded checkpoint. Biases and norm weights are drawn at random (transformers
initialises them to 0 and 1, which would hide a missing bias or norm).
  1. `grpo logprobs` equals transformers' log-probs within 1e-4 in fp32;
  2. in bf16, grpo is no farther from transformers' fp32 than transformers' own bf16 is;
  3. `grpo init` writes checkpoints that transformers loads with no missing or unexpected weights
     and the same log-probs;
  4. LoRA: a random PEFT adapter loaded by `grpo logprobs --model ADAPTER_DIR` gives the PEFT
     model's log-probs: all-linear on Qwen2 (attention and the dense MLP), and on Qwen3-MoE the
     attention plus gate_proj/up_proj/down_proj, which PEFT puts on the fused routed experts.
     (PEFT's all-linear on Qwen3-MoE also adapts the router weight, which grpo refuses.)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_test import VOCAB, bf16_check, compare, grpo_logprobs, hf_logprobs, make_rows, reshard  # noqa: E402

BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            initializer_range=0.25, rms_norm_eps=1e-6)
CASES = {
    # tag: (config class, model class, config)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(BASE, tie_word_embeddings=True)),
    "qwen2_yarn": ("Qwen2Config", "Qwen2ForCausalLM",
                   dict(BASE, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                               "original_max_position_embeddings": 16})),
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(BASE, num_key_value_heads=1, head_dim=24, attention_bias=True,
                    rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                     "rope_theta": 500000.0})),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(BASE, head_dim=32, rope_parameters={
        "rope_type": "default", "rope_theta": 1000000.0})),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(BASE, head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                       norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1])),
}


def build(tag, out_dir, seed):
    cfg_cls, model_cls, cfg = CASES[tag]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**cfg)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
            elif p.dim() == 1:
                p.uniform_(0.5, 1.5)  # RMSNorm weights
    model.save_pretrained(out_dir)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    torch.set_grad_enabled(False)
    ok = True
    # Rows up to ~44 tokens: past original_max_position_embeddings (16) of the scaled RoPE cases.
    rows = make_rows(0)
    rows += [{"prompt_ids": [i % VOCAB for i in range(7, 7 + 40)], "completion_ids": [5, 6, 7, 8, 9, 10]}]

    for i, tag in enumerate(CASES):
        d = os.path.join(a.workdir, tag)
        model = build(tag, d, seed=i + 1)
        if tag == "qwen3":
            reshard(d, 3)
        ref = hf_logprobs(model, rows)
        ok &= compare(f"{tag} logprobs", grpo_logprobs(a.grpo, d, rows, a.workdir, tag), ref)
        if tag in ("qwen2", "qwen3_moe"):
            ok &= bf16_check(a, tag, d, rows, model, ref, no_flips=tag == "qwen2")

    # Checkpoints grpo writes load in transformers and give the same log-probs.
    for tag in ("qwen2", "llama3", "qwen3", "qwen3_moe"):
        cfg_cls, model_cls, cfg = CASES[tag]
        c = json.loads(getattr(transformers, cfg_cls)(**cfg).to_json_string())
        cfg_path = os.path.join(a.workdir, f"init_{tag}.config.json")
        with open(cfg_path, "w") as f:
            json.dump(c, f)
        d = os.path.join(a.workdir, f"init_{tag}")
        subprocess.run([a.grpo, "init", "--config", cfg_path, "--output", d, "--seed", "11"], check=True)
        model, info = getattr(transformers, model_cls).from_pretrained(d, output_loading_info=True)
        model.eval()
        if info["missing_keys"] or info["unexpected_keys"] or info.get("mismatched_keys"):
            print(f"FAIL init_{tag}: transformers reports missing={info['missing_keys']} "
                  f"unexpected={info['unexpected_keys']} mismatched={info.get('mismatched_keys')}")
            ok = False
        ok &= compare(f"init_{tag}: grpo-written checkpoint in transformers",
                      grpo_logprobs(a.grpo, d, rows, a.workdir, f"init_{tag}"), hf_logprobs(model, rows))
    from peft import LoraConfig, get_peft_model
    for tag in ("qwen2", "qwen3_moe"):
        d = os.path.join(a.workdir, tag)
        torch.manual_seed(5)
        base = getattr(transformers, CASES[tag][1]).from_pretrained(d).eval()
        targets = "all-linear" if tag == "qwen2" else ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"]
        peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                     init_lora_weights=False, lora_dropout=0.0)).eval()
        adapter = os.path.join(a.workdir, f"{tag}_adapter")
        peft_model.save_pretrained(adapter)
        ok &= compare(f"{tag} + PEFT adapter ({targets if isinstance(targets, str) else 'attention + MLP names'})", grpo_logprobs(a.grpo, adapter, rows, a.workdir,
                                                                          f"{tag}_adapter"), hf_logprobs(peft_model, rows))
        with open(os.path.join(adapter, "adapter_config.json")) as f:
            print(f"  {tag} adapter: target_modules {sorted(json.load(f)['target_modules'])}")
    print("parity:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""LoRA adapters against PEFT (fp32, CPU), both directions.

Targets: every attention projection and the MLP names, which PEFT on transformers 5 turns into
adapters on the fused routed-expert weights (gate_up_proj with rank 2r, down_proj).
1. PEFT -> grpo: PEFT puts random (non-zero) adapters on a tiny DeepseekV3 that transformers wrote
   and saves them; `grpo logprobs --model ADAPTER_DIR` (base from base_model_name_or_path, then the
   adapter) equals the PEFT model's log-probs within 1e-4, and differs from the base's.
2. grpo -> PEFT: a LoRA sft stage trains adapters on the same base; its adapter holds exactly the
   tensor names PEFT's own state dict has for that config, PeftModel.from_pretrained loads every
   tensor bit for bit, and its log-probs equal `grpo logprobs` on it; the merged model grpo writes (merged/) loads in
   transformers with no missing or unexpected weights and gives the same log-probs, and so does
   `grpo merge-adapter` of PEFT's adapter; the base weights on disk are untouched.
3. An adapter config grpo cannot honour (DoRA) is refused with an error naming the file.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import DeepseekV3ForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parity_test import V3, build, compare, grpo_logprobs, hf_logprobs, make_rows  # noqa: E402

TARGETS = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CFG = dict(V3, num_hidden_layers=2, num_nextn_predict_layers=0, vocab_size=300)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    torch.manual_seed(0)
    ok = True
    base_dir = os.path.join(a.workdir, "base")
    base = build("v3", CFG, base_dir, seed=1)
    rows = make_rows(5, n=8)
    base_ref = hf_logprobs(base, rows)

    # 1. PEFT's adapter in grpo.
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
    peft_model = get_peft_model(build("v3", CFG, os.path.join(a.workdir, "base_copy"), seed=1), cfg).eval()
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # far from zero, so the adapters move the outputs
    peft_dir = os.path.join(a.workdir, "peft_adapter")
    peft_model.save_pretrained(peft_dir)
    with open(os.path.join(peft_dir, "adapter_config.json")) as f:
        ac = json.load(f)
    ac["base_model_name_or_path"] = os.path.abspath(base_dir)
    with open(os.path.join(peft_dir, "adapter_config.json"), "w") as f:
        json.dump(ac, f)
    ref = hf_logprobs(peft_model, rows)
    ours = grpo_logprobs(a.grpo, peft_dir, rows, a.workdir, "peft")
    ok &= compare("PEFT adapter loaded by grpo", ours, ref)
    moved = max(abs(x - y) for r1, r2 in zip(ref, base_ref) for x, y in zip(r1, r2))
    print(f"{'PASS' if moved > 1e-2 else 'FAIL'} the adapter moves log-probs by up to {moved:.3f} from the base's")
    ok &= moved > 1e-2

    # 2. grpo's adapter in PEFT and transformers.
    recipe = os.path.join(a.workdir, "lora_sft.yaml")
    with open(recipe, "w") as f:
        f.write(f"""type: sft
model_dir: {os.path.abspath(base_dir)}
tokenizer: builtin:bytes
task: addition_cot
train_size: 64
eval_size: 8
max_length: 96
per_device_train_batch_size: 8
max_steps: 6
learning_rate: 0.01
lora_r: 4
lora_alpha: 8
lora_target_modules: [{", ".join(TARGETS)}]
lora_save_merged: true
save_every: 0
""")
    run_dir = os.path.join(a.workdir, "run")
    subprocess.run([a.grpo, "train", recipe, "--output", run_dir], check=True)
    final = os.path.join(run_dir, "checkpoint-6")
    ours = grpo_logprobs(a.grpo, final, rows, a.workdir, "grpo_adapter")
    written = set(load_file(os.path.join(final, "adapter_model.safetensors")))
    expected = set(get_peft_model_state_dict(get_peft_model(
        DeepseekV3ForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS))))
    same_names = written == expected
    print(f"{'PASS' if same_names else 'FAIL'} grpo's adapter holds PEFT's {len(expected)} tensor names"
          + ("" if same_names else f": extra {sorted(written - expected)[:3]}, missing {sorted(expected - written)[:3]}"))
    ok &= same_names
    loaded = PeftModel.from_pretrained(DeepseekV3ForCausalLM.from_pretrained(base_dir), final).eval()
    file_sd = load_file(os.path.join(final, "adapter_model.safetensors"))
    peft_sd = get_peft_model_state_dict(loaded)
    exact = set(peft_sd) == set(file_sd) and all(torch.equal(peft_sd[k], file_sd[k]) for k in file_sd)
    nonzero = all(file_sd[k].abs().max() > 0 for k in file_sd)
    print(f"{'PASS' if exact and nonzero else 'FAIL'} PEFT holds every tensor of grpo's adapter, bit for bit "
          f"(all non-zero: {nonzero})")
    ok &= exact and nonzero
    ok &= compare("grpo adapter loaded by PEFT", ours, hf_logprobs(loaded, rows))
    trained = max(abs(x - y) for r1, r2 in zip(ours, base_ref) for x, y in zip(r1, r2))
    print(f"{'PASS' if trained > 1e-3 else 'FAIL'} training moved the adapted log-probs by up to {trained:.3f}")
    ok &= trained > 1e-3
    merged, info = DeepseekV3ForCausalLM.from_pretrained(os.path.join(final, "merged"), output_loading_info=True)
    clean = not info["missing_keys"] and not info["unexpected_keys"]
    print(f"{'PASS' if clean else 'FAIL'} merged model loads in transformers: {sorted(info['missing_keys'])[:3]} missing, "
          f"{sorted(info['unexpected_keys'])[:3]} unexpected")
    ok &= clean
    ok &= compare("merged model in transformers vs grpo adapter", ours, hf_logprobs(merged.eval(), rows))
    # `grpo merge-adapter` does the same for any adapter, here PEFT's own.
    peft_merged = os.path.join(a.workdir, "peft_merged")
    subprocess.run([a.grpo, "merge-adapter", "--adapter", peft_dir, "--output", peft_merged], check=True)
    ok &= compare("grpo merge-adapter of PEFT's adapter, in transformers, vs the PEFT model",
                  hf_logprobs(DeepseekV3ForCausalLM.from_pretrained(peft_merged).eval(), rows), ref)
    ok &= compare("base on disk untouched", hf_logprobs(DeepseekV3ForCausalLM.from_pretrained(base_dir).eval(), rows),
                  base_ref, tol=0.0)

    # 3. Refusals.
    ac["use_dora"] = True
    with open(os.path.join(peft_dir, "adapter_config.json"), "w") as f:
        json.dump(ac, f)
    r = subprocess.run([a.grpo, "logprobs", "--model", peft_dir, "--input", os.path.join(a.workdir, "peft.in.jsonl"),
                        "--output", os.path.join(a.workdir, "x.jsonl")], capture_output=True, text=True)
    refused = r.returncode != 0 and "adapter_config.json" in r.stderr and "use_dora" in r.stderr
    print(f"{'PASS' if refused else 'FAIL'} a DoRA adapter is refused: {r.stderr.strip()[-160:]}")
    ok &= refused
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

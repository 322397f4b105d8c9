#!/usr/bin/env python3
"""Bad input to the `grpo` program: every failure is one line `grpo: error: <what and where>` on
stderr and a non-zero exit status; no stack dump, no abort, no partial output file."""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

TINY = {"model_type": "deepseek_v3", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
        "moe_intermediate_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "q_lora_rank": 8, "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4,
        "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
        "first_k_dense_replace": 1, "max_position_embeddings": 64, "num_nextn_predict_layers": 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    w = a.workdir
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    P = lambda *p: os.path.join(w, *p)

    def write(name, text, mode="w"):
        with open(P(name), mode) as f:
            f.write(text)
        return P(name)

    cfg = write("config.json", json.dumps(TINY))
    model = P("model")
    subprocess.run([a.grpo, "init", "--config", cfg, "--output", model], check=True, capture_output=True)
    good_in = write("in.jsonl", json.dumps({"prompt_ids": [1, 2], "completion_ids": [3]}) + "\n")

    def corrupt_model(name, mutate):
        d = P(name)
        shutil.copytree(model, d)
        st = os.path.join(d, "model.safetensors")
        data = bytearray(open(st, "rb").read())
        data = mutate(data)
        open(st, "wb").write(bytes(data))
        return d

    def header(data):
        n = struct.unpack("<Q", bytes(data[:8]))[0]
        return n, json.loads(bytes(data[8:8 + n]))

    def with_header(data, h):
        n, _ = header(data)
        body = data[8 + n:]
        t = json.dumps(h).encode()
        t += b" " * ((8 - len(t) % 8) % 8)
        return bytearray(struct.pack("<Q", len(t)) + t + body)

    def swap_dtype(data):
        n, h = header(data)
        h["model.norm.weight"]["dtype"] = "I32"
        return with_header(data, h)

    def overlap(data):
        n, h = header(data)
        a_, b_ = h["model.norm.weight"], h["lm_head.weight"]
        size = a_["data_offsets"][1] - a_["data_offsets"][0]
        a_["data_offsets"] = [b_["data_offsets"][0], b_["data_offsets"][0] + size]
        return with_header(data, h)

    def drop(data):
        n, h = header(data)
        del h["model.layers.0.self_attn.kv_b_proj.weight"]
        return with_header(data, h)

    def reshape(data):
        n, h = header(data)
        t = h["model.norm.weight"]
        t["shape"] = [t["shape"][0] // 2, 2]
        return with_header(data, h)

    bad_cfg = write("bad_config.json", json.dumps(dict(TINY, model_type="mistral")))
    cases = [
        ("unknown model_type", ["init", "--config", bad_cfg, "--output", P("x")], ["bad_config.json", "model_type", "mistral"]),
        ("malformed config", ["init", "--config", write("m.json", "{oops"), "--output", P("x")], ["m.json", "JSON"]),
        ("missing config", ["init", "--config", P("nope.json"), "--output", P("x")], ["nope.json"]),
        ("truncated checkpoint",
         ["logprobs", "--model", corrupt_model("trunc", lambda d: d[:len(d) - 100]), "--input", good_in, "--output", P("o")],
         ["trunc/model.safetensors", "outside the data"]),
        ("header length beyond file",
         ["logprobs", "--model", corrupt_model("hdr", lambda d: bytearray(struct.pack("<Q", 10**9)) + d[8:]),
          "--input", good_in, "--output", P("o")], ["hdr/model.safetensors", "header length"]),
        ("overlapping tensors",
         ["logprobs", "--model", corrupt_model("ovl", overlap), "--input", good_in, "--output", P("o")],
         ["ovl/model.safetensors", "overlap"]),
        ("wrong dtype",
         ["logprobs", "--model", corrupt_model("dt", swap_dtype), "--input", good_in, "--output", P("o")],
         ["dt/model.safetensors", "model.norm.weight"]),
        ("wrong shape",
         ["logprobs", "--model", corrupt_model("shape", reshape), "--input", good_in, "--output", P("o")],
         ["shape/model.safetensors", "model.norm.weight", "shape"]),
        ("missing tensor",
         ["logprobs", "--model", corrupt_model("miss", drop), "--input", good_in, "--output", P("o")],
         ["miss", "model.layers.0.self_attn.kv_b_proj.weight"]),
        ("input not JSON", ["logprobs", "--model", model, "--input", write("bad1.jsonl", "{\"prompt_ids\": [1,\n"),
                            "--output", P("o")], ["bad1.jsonl:1", "JSON"]),
        ("input missing field", ["logprobs", "--model", model, "--input",
                                 write("bad2.jsonl", '{"prompt_ids":[1]}\n{"completion_ids":[1]}\n'), "--output", P("o")],
         ["bad2.jsonl:1", "completion_ids"]),
        ("token out of vocab", ["logprobs", "--model", model, "--input",
                                write("bad3.jsonl", '{"prompt_ids":[1],"completion_ids":[2]}\n{"prompt_ids":[1],"completion_ids":[999]}\n'),
                                "--output", P("o")], ["bad3.jsonl", "row 2", "999"]),
        ("empty prompt", ["logprobs", "--model", model, "--input",
                          write("bad4.jsonl", '{"prompt_ids":[],"completion_ids":[2]}\n'), "--output", P("o")],
         ["bad4.jsonl:1", "prompt_ids"]),
        ("bad dtype", ["logprobs", "--model", model, "--input", good_in, "--output", P("o"), "--dtype", "int3"], ["int3"]),
        ("bad device", ["logprobs", "--model", model, "--input", good_in, "--output", P("o"), "--device", "tpu"], ["tpu"]),
        ("model dir without weights", ["logprobs", "--model", w, "--input", good_in, "--output", P("o")],
         ["model.safetensors"]),
        ("tokenizer file missing", ["tokenize", "--tokenizer", P("none"), "--input", good_in], ["none"]),
        ("tokenizer malformed", ["tokenize", "--tokenizer", write("tok.json", "{\"model\": {"), "--input", good_in],
         ["tok.json"]),
        ("unknown option", ["logprobs", "--model", model, "--input", good_in, "--output", P("o"), "--bogus"], ["--bogus"]),
        ("missing required option", ["init", "--config", cfg], ["--output"]),
        ("unknown subcommand", ["frobnicate"], ["frobnicate"]),
    ]
    ok = True
    for name, args, must in cases:
        if os.path.exists(P("o")):
            os.remove(P("o"))
        r = subprocess.run([a.grpo, *args], capture_output=True, text=True)
        err = r.stderr.strip().split("\n")
        errline = [l for l in err if l.startswith("grpo: error: ")]
        problems = []
        if r.returncode == 0:
            problems.append("exit status 0")
        if r.returncode < 0:
            problems.append(f"killed by signal {-r.returncode}")
        if len(errline) != 1:
            problems.append(f"{len(errline)} 'grpo: error:' lines")
        elif any(m not in errline[0] for m in must):
            problems.append(f"message lacks {[m for m in must if m not in errline[0]]}")
        if any(("frame #" in l or "Traceback" in l or "terminate called" in l) for l in err):
            problems.append("stack dump on stderr")
        if os.path.exists(P("o")):
            problems.append("wrote a partial output file")
        print(f"{'PASS' if not problems else 'FAIL'} {name}: {errline[0] if errline else r.stderr.strip()[:200]}"
              + (f"  <- {'; '.join(problems)}" if problems else ""))
        ok &= not problems
    # And the good input works.
    r = subprocess.run([a.grpo, "logprobs", "--model", model, "--input", good_in, "--output", P("o")],
                       capture_output=True, text=True)
    lp = json.loads(open(P("o")).read())["logprobs"] if r.returncode == 0 else None
    good = r.returncode == 0 and len(lp) == 1 and lp[0] < 0
    print(f"{'PASS' if good else 'FAIL'} good input: {lp}")
    ok &= good
    # --help works for every subcommand.
    for sub in ["init", "logprobs", "tokenize"]:
        r = subprocess.run([a.grpo, sub, "--help"], capture_output=True, text=True)
        h = r.returncode == 0 and "--" in r.stdout
        print(f"{'PASS' if h else 'FAIL'} grpo {sub} --help")
        ok &= h
    print("cli errors:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

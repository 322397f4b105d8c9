#!/usr/bin/env python3
"""Reads the JSON lines of scripts/bench_gpu.sh and prints its one table: each training and decode
row with its fraction of the machine's measured limit and its ratio to transformers measured in the
same run (the same shape, batch and context)."""
import json
import sys

checks, train, decode, train_profile, products, device = [], [], [], [], [], None
decode_profile, prefill_profile = [], []
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    {"check": checks, "train": train, "decode": decode, "train_profile": train_profile,
     "invariant_matmul": products, "profile": decode_profile, "prefill_profile": prefill_profile}.get(r["kind"], []).append(r)
    if r["kind"] == "device":
        device = r

# Each bench_forward call measures the matrix-product rate again, and a hot device gives 10% less
# at times: every MFU is against the largest rate measured in the run, one denominator for all.
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
    variant = "" if r["engine"] == "grpo" else f" ({r['engine'].removeprefix('grpo, ')})"
    attention = f", {r['attention']} attention" if r.get("attention") else ""
    print(f"| train fwd+bwd{variant} | V2-Lite shape, {r['layers']} layers, bf16{attention} | {r['batch']} | {r['seq']} | {r['tokens_s']:.0f} | "
          f"MFU {100 * r['tflops'] / peak:.1f}% ({r['tflops']:.0f} TFLOP/s) | "
          + (f"{base:.0f} | {r['tokens_s'] / base:.2f}x |" if base else "- | - |"))
hf_decode = {(r["batch"], r["prompt"]): r["decode_tok_s"] for r in decode if r["engine"].startswith("transformers")}
for r in decode:
    if r["engine"] != "grpo":
        continue
    base = hf_decode.get((r["batch"], r["prompt"]))
    print(f"| decode | V2-Lite shape, bf16, CUDA graphs | {r['batch']} | {r['prompt']} + {r['new']} | {r['decode_tok_s']:.0f} | "
          f"roofline {100 * r['roofline']:.1f}% | " + (f"{base:.0f} | {r['decode_tok_s'] / base:.2f}x |" if base else "- | - |"))


def compare(engine, title, header, cells):
    """A table of the plain decode rows against the same batch and context run as `engine`."""
    other = {(r["batch"], r["prompt"]): r for r in decode if r["engine"] == engine}
    if not other:
        return
    print()
    print(title)
    print()
    print("| batch | context | " + " | ".join(header) + " |")
    print("|---|---|" + "---|" * len(header))
    for r in decode:
        o = other.get((r["batch"], r["prompt"])) if r["engine"] == "grpo" else None
        if o:
            print(f"| {r['batch']} | {r['prompt']} + {r['new']} | " + " | ".join(cells(r, o)) + " |")


def drift(r):
    return f"{r.get('logprob_diff_mean', 0):.4f} / {r['logprob_diff_max']:.3f}"


compare("grpo-gathered", "Decode attention: the paged MLA kernel against the same engine attending over a gathered copy of the cache",
        ["paged ms/step", "gathered ms/step", "paged tokens/s", "gathered tokens/s", "speed-up"],
        lambda r, g: [f"{r['ms_per_step']:.2f}", f"{g['ms_per_step']:.2f}", f"{r['decode_tok_s']:.0f}",
                      f"{g['decode_tok_s']:.0f}", f"{r['decode_tok_s'] / g['decode_tok_s']:.2f}x"])
compare("grpo-synchronous", "Decode with overlapped steps (each queued before the host has seen the last step's tokens) against the\n"
        "synchronous loop in the same run",
        ["synchronous ms/step", "overlapped ms/step", "speed-up", "synchronous roofline", "overlapped roofline",
         "synchronous drift mean / max", "overlapped drift mean / max"],
        lambda r, s: [f"{s['ms_per_step']:.2f}", f"{r['ms_per_step']:.2f}", f"{s['ms_per_step'] / r['ms_per_step']:.2f}x",
                      f"{100 * s['roofline']:.1f}%", f"{100 * r['roofline']:.1f}%", drift(s), drift(r)])
compare("grpo-fp8", "Decode with FP8 weights (e4m3; 128 x 128 block scales, per-row for the routed experts) against bf16 in the same\n"
        "run; log-prob drift: |engine - bf16 training forward| over the first 8 completions of each row",
        ["bf16 ms/step", "fp8 ms/step", "speed-up", "fp8 roofline (fp8 bytes)", "bf16 drift mean / max", "fp8 drift mean / max"],
        lambda r, f: [f"{r['ms_per_step']:.2f}", f"{f['ms_per_step']:.2f}", f"{r['ms_per_step'] / f['ms_per_step']:.2f}x",
                      f"{100 * f['roofline']:.1f}%", drift(r), drift(f)])
compare("grpo-exact", "Decode with exact_rollout (the batch-invariant forward, CUDA graphs) against the ordinary engine in the same\n"
        "run; log-prob drift: |engine - training forward| over the first 8 completions of each row (0: equal bit for bit)",
        ["ordinary ms/step", "exact ms/step", "cost", "exact tokens/s", "ordinary drift mean / max", "exact drift mean / max"],
        lambda r, e: [f"{r['ms_per_step']:.2f}", f"{e['ms_per_step']:.2f}", f"{e['ms_per_step'] / r['ms_per_step']:.2f}x",
                      f"{e['decode_tok_s']:.0f}", drift(r), drift(e)])

compare("grpo-unfused", "Decode with the fused kernels (RMSNorm, RoPE, SwiGLU, the MoE's grouping and weighted sum) against ATen's\n"
        "kernel chains in the same run",
        ["fused ms/step", "ATen chains ms/step", "speed-up", "fused roofline", "ATen chains roofline"],
        lambda r, u: [f"{r['ms_per_step']:.2f}", f"{u['ms_per_step']:.2f}", f"{u['ms_per_step'] / r['ms_per_step']:.2f}x",
                      f"{100 * r['roofline']:.1f}%", f"{100 * u['roofline']:.1f}%"])
for kernel, what in (("router", "the router after its logits in one kernel"),
                     ("mla_decode_prologue", "MLA's decode prologue in one kernel"),
                     ("add_rms_norm", "each residual add and the RMSNorm after it in one kernel"),
                     ("mla_decode_prologue,add_rms_norm", "MLA's decode prologue and the fused residual adds"),
                     ("packed_swiglu", "SwiGLU in 16-byte packs"),
                     ("fused_sampler", "the sampler in one kernel"),
                     ("linear_rows", "the linear layers of at most 8 rows a warp a column"),
                     ("fused_sampler,linear_rows", "the sampler in one kernel and the few-row linear layers"),
                     ("dependent_launch", "the few-row products launched as dependents of the kernel before them")):
    compare(f"grpo-without-{kernel}", f"Decode with {what} (adopted) against the same engine without it\n"
            f"(GRPO_KERNEL_TRIAL=-{kernel.replace(',', ',-')}) in the same run",
            ["with ms/step", "without ms/step", "speed-up", "with roofline", "without roofline",
             "with drift mean / max", "without drift mean / max"],
            lambda r, x: [f"{r['ms_per_step']:.2f}", f"{x['ms_per_step']:.2f}", f"{x['ms_per_step'] / r['ms_per_step']:.2f}x",
                          f"{100 * r['roofline']:.1f}%", f"{100 * x['roofline']:.1f}%", drift(r), drift(x)])


def exact_prefill():
    """exact_rollout with its kernels on trial against exact_rollout with the default kernels, and the
    batch-invariant products alone against ATen's."""
    if products:
        print()
        print("Batch-invariant products alone (bf16 weights rounded to bf16; fp32 weights, fp32 out), against ATen's product\n"
              "in the weights' dtype on the same inputs; the other form (GRPO_KERNEL_TRIAL: an adopted kernel turned off\n"
              "with '-', or one on trial) against the default, same run")
        print()
        print("| rows | groups | N x K | weights | batch-invariant TFLOP/s | ATen TFLOP/s | batch-invariant / ATen | other form | "
              "its TFLOP/s | default / other | bits equal |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in products:
            r.setdefault("aten_gflops", r.get("aten_bf16_gflops", 0))  # its name in earlier logs
            st = r.get("other_gflops")
            name = r.get("other", "-") + (f" (default: {r['tile_rows']}-row tiles)" if "tile_rows" in r else "")
            print(f"| {r['rows']} | {r['groups']} | {r['n']} x {r['k']} | {r.get('weights', 'bf16')} | {r['invariant_gflops'] / 1e3:.2f} | "
                  f"{r['aten_gflops'] / 1e3:.2f} | {r['invariant_gflops'] / r['aten_gflops']:.2f} | {name} | "
                  + (f"{st / 1e3:.2f} | {r['invariant_gflops'] / st:.2f}x | {r['other_equal']} |" if st else "- | - | - |"))
    base = {(r["batch"], r["prompt"]): r for r in decode if r["engine"] == "grpo-exact"}
    plain = {(r["batch"], r["prompt"]): r for r in decode if r["engine"] == "grpo"}
    rows = [r for r in decode if r["engine"] == "grpo-exact-trial" and (r["batch"], r["prompt"]) in base]
    if not rows:
        return
    print()
    print("exact_rollout with its kernels on trial (bench_gpu.sh's EXACT_TRIAL, default tall_tiles,-staged_tiles)\nagainst exact_rollout with "
          "the default kernels and the ordinary engine, same run; prefill tokens/s, decode ms/step, drift (0: equal bit for bit)")
    print()
    print("| batch | context | ordinary prefill tok/s | exact prefill tok/s | trial prefill tok/s | prefill speed-up | "
          "trial prefill cost vs ordinary | ordinary ms/step | exact ms/step | trial ms/step | trial decode cost vs ordinary | "
          "exact drift max | trial drift max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = base[(r["batch"], r["prompt"])]
        o = plain.get((r["batch"], r["prompt"]))
        print(f"| {r['batch']} | {r['prompt']} + {r['new']} | " + (f"{o['prefill_tok_s']:.0f}" if o else "-")
              + f" | {e['prefill_tok_s']:.0f} | {r['prefill_tok_s']:.0f} | {r['prefill_tok_s'] / e['prefill_tok_s']:.2f}x | "
              + (f"{o['prefill_tok_s'] / r['prefill_tok_s']:.2f}x | {o['ms_per_step']:.2f}" if o else "- | -")
              + f" | {e['ms_per_step']:.2f} | {r['ms_per_step']:.2f} | "
              + (f"{r['ms_per_step'] / o['ms_per_step']:.2f}x" if o else "-")
              + f" | {e['logprob_diff_max']:.3g} | {r['logprob_diff_max']:.3g} |")


exact_prefill()


def engine_profiles():
    """Where a prefill and a decode step of each profiled engine go (bench_rollout --profile)."""
    for rows, what, unit in ((prefill_profile, "prefill", "ms"), (decode_profile, "decode step", "us_per_step")):
        for engine, batch in sorted({(r["engine"], r["batch"]) for r in rows}):
            mine = [r for r in rows if (r["engine"], r["batch"]) == (engine, batch)]
            whole = next((r for r in mine if r["kernel"] == "(all)"), None)
            print()
            print(f"{engine}, batch {batch}: the {what}'s kernels by device time"
                  + (f" ({whole[unit]:.1f} {'ms' if unit == 'ms' else 'us a step'} of kernels)" if whole else ""))
            print()
            print("| kernel | " + ("calls | ms" if unit == "ms" else "calls a step | us a step") + " | share |")
            print("|---|---|---|---|")
            for r in mine:
                if r["kernel"] != "(all)":
                    calls = r["calls"] if unit == "ms" else f"{r['calls_per_step']:.1f}"
                    print(f"| {r['kernel']} | {calls} | {r[unit]:.2f} | {100 * r['share']:.1f}% |")


engine_profiles()


def speculative():
    """Speculative decoding at each num_speculative_tokens against the same MTP model decoding plainly."""
    plain = {(r["batch"], r["prompt"]): r for r in decode if r["engine"] == "grpo-mtp-plain"}
    spec = sorted((r for r in decode if r["engine"].startswith("grpo-spec-")),
                  key=lambda r: (r["prompt"], r["batch"], int(r["engine"].rsplit("-", 1)[1])))
    if not plain or not spec:
        return
    print()
    print("Speculative decoding with the MTP module (random weights) against the same model decoding plainly, same run;\n"
          "tokens per check = 1 + drafts x acceptance")
    print()
    print("| batch | context | drafts a step | plain ms/step | speculative ms/step | step cost | acceptance | "
          "tokens per check | plain tokens/s | speculative tokens/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in spec:
        p = plain.get((r["batch"], r["prompt"]))
        if not p:
            continue
        k = int(r["engine"].rsplit("-", 1)[1])
        acc = r.get("draft_acceptance", 0)
        print(f"| {r['batch']} | {r['prompt']} + {r['new']} | {k} | {p['ms_per_step']:.2f} | {r['ms_per_step']:.2f} | "
              f"{r['ms_per_step'] / p['ms_per_step']:.2f}x | {acc:.2f} | {1 + k * acc:.2f} | {p['decode_tok_s']:.0f} | "
              f"{r['decode_tok_s']:.0f} | {r['decode_tok_s'] / p['decode_tok_s']:.2f}x |")


speculative()


def training_profile():
    """Where one training forward+backward step's device time goes (bench_forward --profile)."""
    if not train_profile:
        return
    for shape in sorted({(r["batch"], r["seq"]) for r in train_profile}):
        rows = [r for r in train_profile if (r["batch"], r["seq"]) == shape]
        whole = next((r for r in rows if r["kernel"] == "(all)"), None)
        print()
        print(f"Training step, batch {shape[0]} x {shape[1]}: kernels by device time"
              + (f" ({whole['ms']:.1f} ms of kernels in a {whole['step_ms']:.1f} ms step)" if whole else ""))
        print()
        print("| kernel | calls | ms | share |")
        print("|---|---|---|---|")
        for r in rows:
            if r["kernel"] != "(all)":
                print(f"| {r['kernel']} | {r['calls']} | {r['ms']:.2f} | {100 * r['share']:.1f}% |")


training_profile()

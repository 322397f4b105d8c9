#!/usr/bin/env bash
# The GPU benchmark in one call: builds, checks the CUDA paths against their CPU / fp32 references
# (the CUDA tests of test_model and test_rollout), measures the machine's own limits (bf16
# matrix-product rate, device copy bandwidth), then training forward+backward and decode of the
# DeepSeek-V2-Lite shape (random weights, bf16, GRPO_BENCH_LAYERS layers, default 12 of 27) with
# transformers in the same run as the baseline, and prints one table (bench-out/gpu/table.md).
#   scripts/bench_gpu.sh
# Decode runs four ways per context: paged MLA kernel, gathered attention, FP8 weights, exact_rollout;
# and at 1,024 tokens of prompt with ATen's kernel chains instead of the fused kernels.
# Environment: BUILD (build dir, default build-gpu), CMAKE_ARGS (extra configure arguments),
# PROMPTS (decode contexts, default 128,1024,2048), BATCHES (default 1,128,256), NEW (128);
# SPEC_DRAFTS (say 1,2,3; default none): also speculative decoding with an MTP module at each of
# these num_speculative_tokens, against the same model decoding plainly (1,024-token contexts);
# TRAIN_PROFILE (say 15; default 0): also the N kernels taking the most time in a training step;
# PARTS (default checks,train,decode,variants,fused,exact,transformers): the parts to run, for a
# call that must fit a time limit (train: forward+backward, also without the fused training
# kernels (train_kernels), without the experts' gathers (gather_combine) and MLA's assembled inputs
# (mla_assemble), alone and together, with SwiGLU an element a thread (packed_swiglu), and
# transformers'; decode: the plain engine per context; overlap (not in the default set): the engine
# with the synchronous loop per context, next to the decode part's (overlapped steps);
# variants: gathered attention, FP8 and exact_rollout per context; fused: ATen's chains, and the
# engine without each adopted decode kernel (router, mla_decode_prologue, add_rms_norm, the last two
# also together, packed_swiglu, fused_sampler: the sampler in one kernel, linear_rows: the linear
# layers of at most 8 rows, the last two also together, dependent_launch: the few-row products
# launched as dependents of the kernel before them), at 1,024 tokens; exact: the batch-invariant
# products alone (without the adopted decode kernels; the fp32 ones without fp32_products) and
# exact_rollout at 1,024 tokens, with and without its kernels on trial; transformers: its generate()
# as the decode baseline; kernels (not in the default set): the paged MLA decode kernel alone in
# each of its forms (bench_paged_mla), and the routed experts' decode products alone in tiles (on
# trial) against the grouped GEMM (bench_expert_tiles), each with its own table);
# TRIALS (say "mla_decode_pipeline deep_rows"; default none): also the plain engine per context with
# each of these GRPO_KERNEL_TRIAL values (model/kernel_trial.h), labelled grpo+value.
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" gpu
want() { [[ ",${PARTS:-checks,train,decode,variants,fused,exact,transformers}," == *",$1,"* ]]; }
[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRPO_ASAN_TESTS=OFF \
  -DGRPO_PYTHON="$(command -v "$py")" ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" --target grpo bench_forward bench_rollout bench_invariant test_model test_rollout \
  $(want kernels && echo bench_paged_mla bench_expert_tiles) >/dev/null
work=${GRPO_BENCH_DIR:-bench-out/gpu}
mkdir -p "$work"
log="$work/results.jsonl"
: > "$log"
L=${GRPO_BENCH_LAYERS:-12}

# Correctness first: a fast wrong kernel is worth nothing.
want checks && for t in test_model test_rollout; do
  if "$build/tests/$t" --gtest_filter='*Cuda*' > "$work/$t.log" 2>&1; then ok=true; else ok=false; fi
  passed=$(grep -c '^\[       OK \]' "$work/$t.log" || true)
  echo "{\"kind\": \"check\", \"suite\": \"$t (CUDA tests)\", \"passed\": $passed, \"ok\": $ok}" | tee -a "$log"
done

# Training: forward+backward tokens/s and MFU against the matrix-product rate measured here.
want train && for shape in "1 4096" "8 1024"; do
  set -- $shape
  "$build/scripts/bench/bench_forward" --config scripts/bench/v2_lite.json --layers "$L" --device cuda --dtype bfloat16 \
    --batch "$1" --seq "$2" --iters 5 --warmup 2 --peak-tflops 0 --json --label grpo --profile "${TRAIN_PROFILE:-0}" | tee -a "$log"
  # The same step without the fused training kernels (ATen's chains), without the experts' gathers and
  # MLA's assembled inputs, alone and together, and with SwiGLU an element a thread (model/kernel_trial.h).
  for kernels in -train_kernels -gather_combine -mla_assemble -gather_combine,-mla_assemble -packed_swiglu; do
    GRPO_KERNEL_TRIAL=$kernels "$build/scripts/bench/bench_forward" --config scripts/bench/v2_lite.json --layers "$L" \
      --device cuda --dtype bfloat16 --batch "$1" --seq "$2" --iters 5 --warmup 2 --peak-tflops 0 --json \
      --label "grpo, GRPO_KERNEL_TRIAL=$kernels" | tee -a "$log"
  done
  "$py" scripts/bench/hf_forward.py --config scripts/bench/v2_lite.json --layers "$L" --device cuda --dtype bfloat16 \
    --batch "$1" --seq "$2" --iters 3 --warmup 1 --json --label transformers | tee -a "$log" || echo "transformers failed"
done

# Decode kernels alone: bytes per second against the copy bandwidth, each form.
if want kernels; then
  "$build/scripts/bench/bench_paged_mla" | tee "$work/paged_mla.txt" | grep '^{' >> "$log"
  "$build/scripts/bench/bench_expert_tiles" | tee "$work/expert_tiles.txt" | grep '^{' >> "$log"
fi

# Decode: tokens/s and the fraction of the memory roofline (weights + latent KV cache read per
# step over the copy bandwidth measured here).
"$py" - "$L" "$work/config.json" <<'PY'
import json, sys
c = json.load(open("scripts/bench/v2_lite.json")); c["num_hidden_layers"] = int(sys.argv[1])
json.dump(c, open(sys.argv[2], "w"))
PY
[ -f "$work/model/config.json" ] || "$build/bin/grpo" init --config "$work/config.json" --output "$work/model" --dtype bfloat16 >/dev/null
IFS=, read -ra prompts <<< "${PROMPTS:-128,1024,2048}"
for p in "${prompts[@]}"; do
  if want decode; then
    "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda --dtype bfloat16 --batches "${BATCHES:-1,128,256}" \
      --prompt-len "$p" --new-tokens "${NEW:-128}" --nocache-batches "" --label grpo | tee -a "$log"
  fi
  # Kernels on trial.
  for trial in ${TRIALS:-}; do
    GRPO_KERNEL_TRIAL=$trial "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda \
      --dtype bfloat16 --batches "${BATCHES:-1,128,256}" --prompt-len "$p" --new-tokens "${NEW:-128}" --nocache-batches "" \
      --label "grpo+$trial" | tee -a "$log"
  done
  # The synchronous loop: each step waits for the host to have seen the previous step's tokens
  # (without EngineOptions::overlap_steps).
  if want overlap; then
    "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda --dtype bfloat16 --batches "${BATCHES:-1,128,256}" \
      --prompt-len "$p" --new-tokens "${NEW:-128}" --nocache-batches "" --no-overlap-steps --label grpo-synchronous | tee -a "$log"
  fi
  want variants || continue
  # The same decode with the attention over a gathered copy of the cache: the paged kernel's baseline.
  "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda --dtype bfloat16 --batches "${BATCHES:-1,128,256}" \
    --prompt-len "$p" --new-tokens "${NEW:-128}" --nocache-batches "" --gather-attention --label grpo-gathered | tee -a "$log"
  # FP8 weights (128 x 128 block scales): speed, and log-prob drift from the bf16 policy.
  "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda --dtype bfloat16 --batches "${BATCHES:-1,128,256}" \
    --prompt-len "$p" --new-tokens "${NEW:-128}" --nocache-batches "" --fp8 --label grpo-fp8 | tee -a "$log"
  # exact_rollout: the batch-invariant forward's cost (its log-probs equal training's to the bit).
  "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda --dtype bfloat16 --batches "${BATCHES:-1,128,256}" \
    --prompt-len "$p" --new-tokens "${NEW:-128}" --nocache-batches "" --exact --label grpo-exact | tee -a "$log"
done
# The plain engine at 1,024 tokens, the baseline of the fused and exact parts, when the decode part
# did not run it.
if ! { want decode && [[ ",${PROMPTS:-128,1024,2048}," == *",1024,"* ]]; } && { want fused || want exact; }; then
  "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda --dtype bfloat16 --batches "${BATCHES:-1,128,256}" \
    --prompt-len 1024 --new-tokens "${NEW:-128}" --nocache-batches "" --label grpo | tee -a "$log"
fi
# ATen's kernel chains instead of the fused RMSNorm, RoPE, SwiGLU and MoE kernels: their baseline.
want fused && "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda --dtype bfloat16 --batches "${BATCHES:-1,128,256}" \
  --prompt-len 1024 --new-tokens "${NEW:-128}" --nocache-batches "" --no-fused-kernels --label grpo-unfused | tee -a "$log"
# Without each adopted decode kernel (model/kernel_trial.h; GRPO_KERNEL_TRIAL=-router and so on), and
# without MLA's prologue and the fused residual adds together: what each replaced.
for kernels in router mla_decode_prologue add_rms_norm mla_decode_prologue,add_rms_norm packed_swiglu fused_sampler \
    linear_rows fused_sampler,linear_rows dependent_launch; do
  want fused && GRPO_KERNEL_TRIAL=-${kernels//,/,-} "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda \
    --dtype bfloat16 --batches "${BATCHES:-1,128,256}" --prompt-len 1024 --new-tokens "${NEW:-128}" --nocache-batches "" \
    --label "grpo-without-$kernels" | tee -a "$log"
done
# The batch-invariant products alone (the V2-Lite projections' K = N = 2048, and gate_up's rows over
# 64 experts: decode's 768 and 1,536 rows at batch 128 and 256, a prefill's more) against ATen's
# bf16 product, and against themselves without the adopted decode kernels (staged tiles for the
# grouped rows, narrow columns for a few rows); the fp32 products (the router's N = 64, LoRA r16's
# A and B) without fp32_products; then exact_rollout at 1,024 tokens with the exact mode's
# kernels on trial (EXACT_TRIAL, default tall_tiles,-staged_tiles), next to the same run without (the
# "variants" part) or here when that part is off, and the ordinary engine (the "decode" part, or here).
if want exact; then
  "$build/scripts/bench/bench_invariant" --device cuda | tee -a "$log"
  "$build/scripts/bench/bench_invariant" --device cuda --groups 64 --n 2816 --rows 768,1536,4096,16384,65536 | tee -a "$log"
  for nk in "64 2048" "16 2048" "2048 16"; do
    set -- $nk
    "$build/scripts/bench/bench_invariant" --device cuda --fp32-weights --n "$1" --k "$2" --rows 1,128,512,4096 | tee -a "$log"
  done
  want variants || "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda --dtype bfloat16 \
    --batches "${BATCHES:-1,128,256}" --prompt-len 1024 --new-tokens "${NEW:-128}" --nocache-batches "" --exact \
    --label grpo-exact | tee -a "$log"
  GRPO_KERNEL_TRIAL=${EXACT_TRIAL:-tall_tiles,-staged_tiles} "$build/scripts/bench/bench_rollout" --model "$work/model" --device cuda \
    --dtype bfloat16 --batches "${BATCHES:-1,128,256}" --prompt-len 1024 --new-tokens "${NEW:-128}" --nocache-batches "" \
    --exact --label grpo-exact-trial --profile "${EXACT_PROFILE:-0}" | tee -a "$log"
fi
if [ -n "${SPEC_DRAFTS:-}" ]; then
  # The same shape plus one MTP module (random weights: the acceptance says little, the step cost much).
  "$py" - "$work/config.json" "$work/config_mtp.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["num_nextn_predict_layers"] = 1
json.dump(c, open(sys.argv[2], "w"))
PY
  [ -f "$work/model_mtp/config.json" ] || "$build/bin/grpo" init --config "$work/config_mtp.json" --output "$work/model_mtp" \
    --dtype bfloat16 >/dev/null
  spec_run() {  # label, extra flags
    "$build/scripts/bench/bench_rollout" --model "$work/model_mtp" --device cuda --dtype bfloat16 --batches 1,16,128 \
      --prompt-len 1024 --new-tokens "${NEW:-128}" --nocache-batches "" --label "$1" "${@:2}" | tee -a "$log"
  }
  spec_run grpo-mtp-plain
  IFS=, read -ra drafts <<< "$SPEC_DRAFTS"
  for k in "${drafts[@]}"; do spec_run "grpo-spec-$k" --speculative-mtp --num-speculative-tokens "$k"; done
fi
if want transformers; then
  "$py" scripts/bench/hf_generate.py --model "$work/model" --device cuda --dtype bfloat16 --batches 1,128 \
    --prompt-len 1024 --new-tokens "${NEW:-128}" | tee -a "$log" || echo "transformers generate failed"
fi
echo
"$py" scripts/bench/gpu_table.py < "$log" | tee "$work/table.md"
if want kernels; then
  for f in paged_mla expert_tiles; do
    echo
    sed -n '/^copy bandwidth/,$p' "$work/$f.txt"
  done
fi

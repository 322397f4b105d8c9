#!/usr/bin/env bash
# Rollout decode throughput: the grpo engine (KV cache; on CUDA also without CUDA graphs), a
# no-KV-cache baseline, and transformers generate() on the same checkpoint, in one run.
#   scripts/bench_rollout.sh            CPU: the tiny MoE model (scripts/bench/tiny.json), fp32
#   scripts/bench_rollout.sh gpu        GPU: DeepSeek-V2-Lite shape (scripts/bench/v2_lite.json), bf16,
#                                       GRPO_BENCH_LAYERS layers (default 12 of 27), random weights
#   scripts/bench_rollout.sh --soak [SECONDS]
#                                       the rollout server under 64 clients for SECONDS (60), a quarter
#                                       of the calls hostile (past the limits, bad ids, hang-ups, ...)
# Environment: BUILD (build dir; default build, or build-gpu for gpu), BATCHES, PROMPT, NEW; on CPU,
# EXACT=1 adds bf16 runs with and without exact_rollout (the batch-invariant forward).
if [ "${1:-}" = --soak ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" cpu
  cmake --build "$build" --target bench_rollout_soak >/dev/null
  exec "$build/scripts/bench/bench_rollout_soak" --seconds "${2:-60}"
fi
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-cpu}"
cmake --build "$build" --target bench_rollout grpo >/dev/null
bin="$build/scripts/bench/bench_rollout"
grpo="$build/bin/grpo"
work=${GRPO_BENCH_DIR:-bench-out/rollout-$mode}
mkdir -p "$work"
batches=${BATCHES:-1,16,64,256}
prompt=${PROMPT:-128}
new=${NEW:-128}
log="$work/results.jsonl"
: > "$log"
if [ "$mode" = gpu ]; then
  L=${GRPO_BENCH_LAYERS:-12}
  "$py" - "$L" "$work/config.json" <<'PY'
import json, sys
c = json.load(open("scripts/bench/v2_lite.json")); c["num_hidden_layers"] = int(sys.argv[1])
json.dump(c, open(sys.argv[2], "w"))
PY
  [ -f "$work/model/config.json" ] || "$grpo" init --config "$work/config.json" --output "$work/model" --dtype bfloat16
  args=(--model "$work/model" --device cuda --dtype bfloat16 --batches "$batches" --prompt-len "$prompt" --new-tokens "$new")
  "$bin" "${args[@]}" --label "grpo (KV cache, CUDA graphs)" --nocache-batches "" | tee -a "$log"
  "$bin" "${args[@]}" --label "grpo (KV cache, eager)" --no-graphs --nocache-batches "${NOCACHE_BATCHES:-1,16,64}" \
    --nocache-steps 8 | tee -a "$log"
  "$py" scripts/bench/hf_generate.py --model "$work/model" --device cuda --dtype bfloat16 --batches "$batches" \
    --prompt-len "$prompt" --new-tokens "$new" | tee -a "$log" || echo "transformers baseline failed"
else
  [ -f "$work/model/config.json" ] || "$grpo" init --config scripts/bench/tiny.json --output "$work/model"
  "$bin" --model "$work/model" --device cpu --dtype float32 --batches "$batches" --prompt-len "$prompt" \
    --new-tokens "$new" --label "grpo (KV cache)" --nocache-batches "${NOCACHE_BATCHES:-1,16,64,256}" | tee -a "$log"
  "$py" scripts/bench/hf_generate.py --model "$work/model" --device cpu --dtype float32 --batches "$batches" \
    --prompt-len "$prompt" --new-tokens "$new" | tee -a "$log" || echo "transformers baseline failed"
  if [ -n "${EXACT:-}" ]; then  # the exact_rollout mode's cost, against the ordinary forward in the same dtype
    for flag in "" --exact; do
      "$bin" --model "$work/model" --device cpu --dtype bfloat16 --batches "$batches" --prompt-len "$prompt" \
        --new-tokens "$new" --label "grpo bf16 ${flag:-(ordinary)}" --nocache-batches "" $flag | tee -a "$log"
    done
  fi
fi
echo
"$py" scripts/bench/rollout_table.py < "$log" | tee "$work/table.md"

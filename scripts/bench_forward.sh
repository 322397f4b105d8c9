#!/usr/bin/env bash
# Forward+backward throughput of the grpo policy, with transformers on the same config and
# shapes as the baseline in the same run.
#   scripts/bench_forward.sh            CPU: the tiny MoE model (scripts/bench/tiny.json), fp32
#   scripts/bench_forward.sh gpu        GPU: DeepSeek-V2-Lite shape (scripts/bench/v2_lite.json), bf16,
#                                       GRPO_BENCH_LAYERS layers (default 12 of 27, for memory)
# Build dir: $BUILD (default build, or build-gpu for gpu). MFU is against 800 TFLOP/s.
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-cpu}"
cmake --build "$build" --target bench_forward >/dev/null
bin="$build/scripts/bench/bench_forward"
echo "| run | device | dtype | layers | params | batch x seq | tokens/s (fwd+bwd) | model TFLOP/s | MFU (of 800) |"
echo "|---|---|---|---|---|---|---|---|---|"
if [ "$mode" = gpu ]; then
  L=${GRPO_BENCH_LAYERS:-12}
  for shape in "1 4096" "2 4096" "8 1024"; do
    set -- $shape
    "$bin" --config scripts/bench/v2_lite.json --layers "$L" --device cuda --dtype bfloat16 \
      --batch "$1" --seq "$2" --iters 5 --warmup 2 --label "grpo V2-Lite-shape"
  done
  GRPO_MOE_LOOP=1 "$bin" --config scripts/bench/v2_lite.json --layers "$L" --device cuda --dtype bfloat16 \
    --batch 1 --seq 4096 --iters 3 --warmup 1 --label "grpo, per-expert matmul loop"
  "$py" scripts/bench/hf_forward.py --config scripts/bench/v2_lite.json --layers "$L" --device cuda \
    --dtype bfloat16 --batch 1 --seq 4096 --iters 3 --warmup 1 --label "transformers V2-Lite-shape" || echo "| transformers | failed |"
else
  threads=${OMP_NUM_THREADS:-$(nproc)}
  "$bin" --config scripts/bench/tiny.json --device cpu --dtype float32 --batch 8 --seq 128 --iters 5 --label "grpo tiny (${threads} threads)"
  "$py" scripts/bench/hf_forward.py --config scripts/bench/tiny.json --device cpu --dtype float32 --batch 8 --seq 128 --iters 5 --label "transformers tiny"
fi

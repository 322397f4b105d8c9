#!/usr/bin/env bash
# Peak GPU memory of one training forward+backward against completion length (doubling until out of
# memory), DeepSeek-V2-Lite shape (all 27 layers, random weights, bf16) with LoRA adapters on every
# linear layer and the routed experts: without and with gradient checkpointing.
#   scripts/bench_memory.sh gpu      (LORA_R, default 16; MAX_LEN, default 65536)
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-gpu}"
cmake --build "$build" --target bench_memory >/dev/null
bin="$build/scripts/bench/bench_memory"
echo "| model | gradient checkpointing | completion tokens | peak GB (of which weights) | forward+backward s |"
echo "|---|---|---|---|---|"
for ck in "" --gradient-checkpointing; do
  "$bin" --config scripts/bench/v2_lite.json --device cuda --dtype bfloat16 --lora-r "${LORA_R:-16}" $ck \
    --min-len 1024 --max-len "${MAX_LEN:-65536}" --label "V2-Lite (27 layers) + LoRA r${LORA_R:-16}"
done

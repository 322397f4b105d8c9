#!/usr/bin/env bash
# Peak GPU memory of one training forward+backward against completion length (doubling until out of
# memory), random weights in bf16, without and with gradient checkpointing:
#   - DeepSeek-V2-Lite shape (all 27 layers) with LoRA adapters on every linear layer and the
#     routed experts;
#   - Qwen2.5-1.5B shape, full fine-tuning, holding the trainer's fp32 master weights, gradients and
#     AdamW moments too (16 bytes per parameter).
#   scripts/bench_memory.sh gpu      (LORA_R, default 16; MAX_LEN, default 65536; MODELS, default "v2_lite qwen")
source "$(dirname "${BASH_SOURCE[0]}")/bench_env.sh" "${1:-gpu}"
cmake --build "$build" --target bench_memory >/dev/null
bin="$build/scripts/bench/bench_memory"
echo "| model | gradient checkpointing | completion tokens | peak GB (of which weights and state) | forward+backward s |"
echo "|---|---|---|---|---|"
for model in ${MODELS:-v2_lite qwen}; do
  for ck in "" --gradient-checkpointing; do
    if [ "$model" = v2_lite ]; then
      "$bin" --config scripts/bench/v2_lite.json --device cuda --dtype bfloat16 --lora-r "${LORA_R:-16}" $ck \
        --min-len 1024 --max-len "${MAX_LEN:-65536}" --label "V2-Lite (27 layers) + LoRA r${LORA_R:-16}"
    else
      "$bin" --config scripts/bench/qwen2_5_1_5b.json --device cuda --dtype bfloat16 --training-state $ck \
        --min-len 1024 --max-len "${MAX_LEN:-65536}" --label "Qwen2.5-1.5B shape, full fine-tuning"
    fi
  done
done

#!/usr/bin/env bash
# one-off GPU session script (not committed)
set -x
source .devdeps/env.sh
export CPATH=/opt/devdeps/usr/include/x86_64-linux-gnu:$CPATH
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRPO_PYTHON=$(which python3) -DGRPO_ASAN_TESTS=OFF > $OUT/cmake.log 2>&1 || { tail -30 $OUT/cmake.log; exit 1; }
cmake --build build-gpu -j16 --target grpo communicator_check > $OUT/build.log 2>&1 || { grep -E "error|FAILED" -A5 $OUT/build.log | head -60; exit 1; }
G=build-gpu/bin/grpo
CC=$(find build-gpu -name communicator_check -type f | head -1)

R=recipes/r1_zero_tiny.yaml
W=/tmp/w; rm -rf $W; mkdir -p $W
$G train $R device=cuda bf16=true sft_steps=300 max_steps=1 eval_every=0 --output $W/base > $W/base.log 2>&1 || tail -20 $W/base.log
B=$W/base/checkpoint-0
ls $W/base
C="device=cuda bf16=true model_dir=$B sft_steps=0 max_steps=8 save_every=8 eval_every=0 per_step_prompts=32"
$G train $R $C --output $W/plain1 > $W/p1.log 2>&1 || tail -20 $W/p1.log
$G train $R $C --output $W/plain2 > $W/p2.log 2>&1 || tail -20 $W/p2.log
$G launch --nproc-per-node 1 --master-port 29712 -- $G train $R $C zero_stage=2 bucket_cap_mb=0.01 --output $W/z2 > $W/z2.log 2>&1 || tail -20 $W/z2.log
$G launch --nproc-per-node 1 --master-port 29713 -- $G train $R $C zero_stage=0 bucket_cap_mb=0.01 --output $W/z0 > $W/z0.log 2>&1 || tail -20 $W/z0.log
$G launch --nproc-per-node 1 --master-port 29714 -- $G train $R $C zero_stage=1 --output $W/z1 > $W/z1.log 2>&1 || tail -20 $W/z1.log
$G launch --nproc-per-node 1 --master-port 29715 -- $G train $R $C zero_stage=2 overlap_grad_reduce=false --output $W/z2off > $W/z2off.log 2>&1 || tail -20 $W/z2off.log
grep -h "gradient exchange\|zero_stage" $W/z2/train.log $W/z0/train.log
python3 - <<'PY'
import json, struct, numpy as np
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8+n]); d = b[8+n:]
    return {k: np.frombuffer(d[v["data_offsets"][0]:v["data_offsets"][1]], dtype=np.float32) for k, v in h.items() if k != "__metadata__"}
W = "/tmp/w"
ck = lambda r: load(f"{W}/{r}/checkpoint-8/model.safetensors")
a = ck("plain1"); base = load(f"{W}/base/checkpoint-0/model.safetensors")
for r in ("plain2", "z2", "z0", "z1", "z2off"):
    b = ck(r); print(r, "vs plain1: max |diff|", max(float(np.abs(a[k]-b[k]).max()) for k in a))
print("plain1 moved from base:", max(float(np.abs(a[k]-base[k]).max()) for k in a))
for r in ("plain1", "z2", "z0"):
    m = [json.loads(l) for l in open(f"{W}/{r}/metrics.jsonl") if '"loss"' in l]
    print(r, [(round(x["loss"], 5), round(x["reward"], 3), x.get("perf/grad_comm_overlap")) for x in m][-3:], "peak GB", m[-1].get("memory/peak_allocated_gb"))
PY

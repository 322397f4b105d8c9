#!/usr/bin/env bash
# Sets up grpo on a fresh Debian/Ubuntu machine and builds it into build/.
# Idempotent: re-running skips what is already there.
#   - Debian packages: compiler, CMake, gRPC/protobuf, RE2, fmt, GoogleTest, yaml-cpp,
#     nlohmann-json, CLI11, libseccomp, ICU, GMP, ccache, ninja.
#   - .venv at the repo root with the exact versions in requirements.txt: PyPI's torch (its LibTorch
#     is what we link against) plus transformers, tokenizers, safetensors and math-verify, which only
#     the tests and benchmarks use as references, grpcio(-tools) for the example Python reward
#     worker, and tensorboard to view a run's curves.
# Environment: GRPO_BUILD_TYPE (default Release), GRPO_SKIP_APT=1, GRPO_SKIP_BUILD=1.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { printf '[setup] %s\n' "$*"; }

debs=(build-essential cmake ninja-build ccache pkg-config python3 python3-venv python3-pip
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libre2-dev
      libfmt-dev libgtest-dev libgmock-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev
      libseccomp-dev libicu-dev libgmp-dev libgloo-dev)
if [ "${GRPO_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

# Python packages: every one pinned in requirements.txt (torch matches the GPU machine's 2.11).
# Re-installed whenever requirements.txt changes; pip keeps its wheel cache in ~/.cache/pip.
py=${GRPO_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$py" -m venv .venv
fi
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat .venv/.requirements.sha256 2>/dev/null)" != "$want" ]; then
  log "installing requirements.txt into .venv (torch, transformers, tokenizers, safetensors, math-verify, grpcio, tensorboard; first time: a few GB)"
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > .venv/.requirements.sha256
fi

[ "${GRPO_SKIP_BUILD:-0}" = 1 ] && exit 0
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
if [ ! -f build/CMakeCache.txt ]; then
  log "configuring build/"
  cmake -S . -B build "${gen[@]}" -DCMAKE_BUILD_TYPE="${GRPO_BUILD_TYPE:-Release}" \
        -DGRPO_PYTHON="$root/.venv/bin/python"
fi
log "building (ccache: ${CCACHE_DIR:-~/.cache/ccache})"
cmake --build build -j "$(nproc)"
log "done: build/grpo"

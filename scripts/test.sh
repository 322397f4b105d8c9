#!/usr/bin/env bash
# Runs grpo's test suite (ctest) against build/, building what is out of date first.
# Extra arguments go to ctest (e.g. scripts/test.sh -R parity).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ -f build/CMakeCache.txt ] || { echo "build/ is not configured: run scripts/setup.sh first" >&2; exit 1; }
cmake --build build -j "$(nproc)"
cd build
ctest --output-on-failure -j "$(nproc)" "$@"

# Sourced by the bench_*.sh scripts: `source scripts/bench_env.sh [cpu|gpu]`. Moves to the project
# root and sets $mode, $build (build/, or build-gpu/ in gpu mode; $BUILD overrides) and $py (the
# venv's python unless $GRPO_PYTHON names another).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode=${1:-cpu}
if [ "$mode" = gpu ]; then build=${BUILD:-build-gpu}; else build=${BUILD:-build}; fi
py=${GRPO_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

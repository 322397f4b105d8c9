#!/usr/bin/env bash
# Tokenizer encoding speed: grpo vs HF tokenizers, same tokenizer.json and corpus, same run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cmake --build build --target grpo >/dev/null
py=${GRPO_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$py" scripts/bench/tokenizer_bench.py --grpo build/src/grpo "$@"

#!/usr/bin/env bash
# libFuzzer targets for the parsers that read outside input (fuzz/*.cpp), built with Debian's clang
# (packages clang, libclang-rt-14-dev) with AddressSanitizer and UndefinedBehaviorSanitizer.
#   scripts/fuzz.sh --list            the target names, one per line
#   scripts/fuzz.sh NAME SECONDS      builds NAME once (build-fuzz/) and runs it on fuzz/corpus/NAME
# Exits non-zero on a crash, a leak, a timeout (10 s per input) or running out of memory (2 GB);
# the input that did it is left in build-fuzz/artifacts/NAME/. New inputs that add coverage are
# written to build-fuzz/corpus/NAME (the kept corpus in the repository is not touched).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
targets=(safetensors_header tokenizer_json math_answer json_document recipe_yaml reward_request rollout_request chat_template)
if [ "${1:-}" = --list ]; then printf '%s\n' "${targets[@]}"; exit 0; fi
name=${1:?usage: scripts/fuzz.sh --list | NAME SECONDS}
seconds=${2:?usage: scripts/fuzz.sh NAME SECONDS}
printf '%s\n' "${targets[@]}" | grep -qx "$name" || { echo "unknown target $name (scripts/fuzz.sh --list)"; exit 2; }
command -v clang++ >/dev/null || { echo "needs clang++ (apt-get install clang libclang-rt-14-dev)"; exit 2; }

out=build-fuzz
mkdir -p "$out/obj" "$out/artifacts/$name" "$out/corpus/$name"
flags=(-std=c++17 -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
       -Isrc -I. -I/usr/include/x86_64-linux-gnu)
math_srcs=(rewards/math/lexer.cpp rewards/math/parser.cpp rewards/math/evaluate.cpp rewards/math/equivalence.cpp
           rewards/math/extraction.cpp rewards/math/hendrycks.cpp rewards/math/checker.cpp)
reward_srcs=(rewards/builtin.cpp rewards/code_reward.cpp rewards/plugin.cpp)
sandbox_srcs=(sandbox/sandbox.cpp sandbox/workspace.cpp sandbox/init.cpp sandbox/supervise.cpp sandbox/seccomp_filter.cpp
              sandbox/cgroup.cpp sandbox/classify.cpp)
# Sources each target needs (compiled once per target into the fuzzing binary), and its libraries.
case $name in
  safetensors_header) srcs=(src/io/safetensors.cpp src/util/files.cpp src/util/json.cpp); libs=(-lfmt) ;;
  tokenizer_json) srcs=(src/text/tokenizer.cpp src/text/unicode.cpp src/util/files.cpp src/util/json.cpp)
                  libs=(-lre2 -licuuc); flags+=(-DGRPO_HAVE_ICU=1) ;;
  math_answer) srcs=("${math_srcs[@]}"); libs=(-lre2 -lgmpxx -lgmp) ;;
  json_document) srcs=(src/util/json.cpp); libs=() ;;
  chat_template) srcs=(src/text/chat_template.cpp src/text/jinja/value.cpp src/text/jinja/lexer.cpp src/text/jinja/parser.cpp src/text/jinja/builtins.cpp
                       src/text/jinja/template.cpp src/text/unicode.cpp src/util/files.cpp src/util/json.cpp); libs=() ;;
  recipe_yaml) srcs=(trainer/recipe.cpp trainer/loss_config.cpp "${math_srcs[@]}" "${reward_srcs[@]}" "${sandbox_srcs[@]}" src/util/files.cpp src/util/json.cpp)
               libs=(-lyaml-cpp -lre2 -lgmpxx -lgmp -lseccomp -ldl) ;;
  reward_request) srcs=(rewards/score_calls.cpp "$out/proto/grpo.pb.cc" "${math_srcs[@]}" "${reward_srcs[@]}" "${sandbox_srcs[@]}"
                        src/util/files.cpp src/util/json.cpp)
                  libs=($(pkg-config --libs grpc++ protobuf) -lgmpxx -lgmp -lseccomp -ldl) ;;
  rollout_request) srcs=(rollout/messages.cpp rollout/scheduler.cpp rollout/block_pool.cpp "$out/proto/grpo.pb.cc"
                         src/text/tokenizer.cpp src/text/unicode.cpp src/util/files.cpp src/util/json.cpp)
                   libs=($(pkg-config --libs protobuf) -lre2 -licuuc); flags+=(-DGRPO_HAVE_ICU=1) ;;
esac
# The service messages, generated here as the CMake build does (protobuf-compiler).
if [[ " ${srcs[*]} " == *" $out/proto/grpo.pb.cc "* ]]; then
  mkdir -p "$out/proto"
  if [ ! -f "$out/proto/grpo.pb.cc" ] || [ proto/grpo.proto -nt "$out/proto/grpo.pb.cc" ]; then
    protoc -Iproto --cpp_out="$out/proto" proto/grpo.proto
  fi
  flags+=(-I"$out/proto")
fi
bin=$out/$name
# Objects are shared between targets and rebuilt when their source, or any header, is newer.
newest_header=$(ls -t $(git ls-files '*.h') proto/*.proto | head -1)
objs=()
for s in fuzz/$name.cpp "${srcs[@]}"; do
  o=$out/obj/$(echo "$s" | tr '/' '_').o
  if [ ! -f "$o" ] || [ "$s" -nt "$o" ] || [ "$newest_header" -nt "$o" ] || [ "$0" -nt "$o" ]; then
    echo "compiling $s"
    clang++ "${flags[@]}" -c "$s" -o "$o"
  fi
  objs+=("$o")
done
if [ ! -x "$bin" ] || [ -n "$(find "${objs[@]}" -newer "$bin")" ]; then
  clang++ -fsanitize=fuzzer,address,undefined "${objs[@]}" "${libs[@]}" -o "$bin"
fi
exec "$bin" "$out/corpus/$name" "fuzz/corpus/$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -max_len=65536 -artifact_prefix="$out/artifacts/$name/" -print_final_stats=1

#!/usr/bin/env bash
# Runs the sandbox tests in another isolation mode than the one this process gets:
#   modes.sh unprivileged TEST_BINARY ARGS...   as nobody (user-namespace mode), when started as root
#   modes.sh cgroup-v1 TEST_BINARY SANDBOX ARGS... with GRPO_SANDBOX_CGROUP=v1, when cgroup v1 is usable
# Exit 77 (skipped) when the mode is not available here, saying why.
set -u
mode=$1 bin=$2
shift 2
case $mode in
  unprivileged)
    if [ "$(id -u)" != 0 ]; then echo "not root: the main suite already runs unprivileged"; exit 77; fi
    if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$bin"; then
      echo "nobody cannot reach $bin (a parent directory is private)"; exit 77
    fi
    exec setpriv --reuid=65534 --regid=65534 --clear-groups "$bin" "$@" ;;
  cgroup-v1)
    sandbox=$1
    shift
    if ! GRPO_SANDBOX_CGROUP=v1 "$sandbox" probe | grep -q "cgroup v1"; then
      echo "cgroup v1 is not usable here: $(GRPO_SANDBOX_CGROUP=v1 "$sandbox" probe)"; exit 77
    fi
    GRPO_SANDBOX_CGROUP=v1 exec "$bin" "$@" ;;
esac
echo "unknown mode $mode"; exit 2

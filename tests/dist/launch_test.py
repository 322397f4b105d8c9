#!/usr/bin/env python3
"""`grpo launch`: torchrun's environment per rank, and no survivors when a rank fails.

1. Three ranks print RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT:
   each sees its own rank and the job's world (two nodes of three: node 1 holds ranks 3-5).
2. Rank 1 is SIGKILLed while the others wait (as in a collective): the launcher exits non-zero
   within the grace period, names rank 1 and the signal, and no process of the job is left.
3. A rank that ignores SIGTERM is SIGKILLed once the grace period is over.
4. A command that cannot run is an error naming the rank.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid


def alive(marker):
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    return [p for p in out if int(p) != os.getpid()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", required=True)
    a = ap.parse_args()
    ok = True

    def check(cond, what):
        nonlocal ok
        print(("PASS " if cond else "FAIL ") + what)
        ok &= bool(cond)

    r = subprocess.run([a.grpo, "launch", "--nproc-per-node", "3", "--nnodes", "2", "--node-rank", "1",
                        "--master-addr", "10.0.0.7", "--master-port", "31234", "--", "sh", "-c",
                        'echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT"'],
                       capture_output=True, text=True, timeout=60)
    lines = sorted(r.stdout.split("\n")[:-1])
    check(r.returncode == 0 and lines == [f"{g} 6 {l} 3 10.0.0.7 31234" for l, g in enumerate(range(3, 6))],
          f"environment of each rank: {lines}")

    marker = "grpo-launch-test-" + uuid.uuid4().hex
    t0 = time.time()
    r = subprocess.run([a.grpo, "launch", "--nproc-per-node", "3", "--grace-seconds", "5", "--", "sh", "-c",
                        f'if [ "$RANK" = 1 ]; then sleep 0.5; kill -9 $$; fi; sleep 60; : {marker}'],
                       capture_output=True, text=True, timeout=60)
    took = time.time() - t0
    time.sleep(0.2)
    check(r.returncode != 0 and "rank 1" in r.stderr and "signal 9" in r.stderr,
          f"a killed rank ends the job with an error naming it (exit {r.returncode}): {r.stderr.strip()}")
    check(took < 5 and not alive(marker), f"the other ranks stopped at once ({took:.1f} s), none left")

    # Rank 0 fails only once rank 1 has set its trap: otherwise a fast machine can deliver SIGTERM
    # before the trap exists, and rank 1 would end at once instead of outliving the grace period.
    marker = "grpo-launch-test-" + uuid.uuid4().hex
    ready = os.path.join(tempfile.mkdtemp(prefix="grpo-launch-"), "trap-set")
    t0 = time.time()
    r = subprocess.run([a.grpo, "launch", "--nproc-per-node", "2", "--grace-seconds", "1", "--", "sh", "-c",
                        f'if [ "$RANK" = 0 ]; then while [ ! -e {ready} ]; do sleep 0.05; done; exit 3; fi; '
                        f'trap "" TERM; touch {ready}; while true; do sleep 0.1; done; : {marker}'],
                       capture_output=True, text=True, timeout=60)
    took = time.time() - t0
    time.sleep(0.2)
    check(r.returncode == 3 and "rank 0" in r.stderr and "status 3" in r.stderr and 1 <= took < 5 and not alive(marker),
          f"a rank ignoring SIGTERM is killed after the grace period ({took:.1f} s, exit {r.returncode})")

    r = subprocess.run([a.grpo, "launch", "--nproc-per-node", "2", "--", "/nonexistent/program"],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode != 0 and "cannot run '/nonexistent/program'" in r.stderr, "a command that cannot run")
    print("launch:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

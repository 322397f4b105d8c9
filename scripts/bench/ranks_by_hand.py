"""Ranks of a grpo job started by hand, as a scheduler that starts each rank itself would (torchrun's
variables, no `grpo launch` to stop the others), and one of them stopped mid-run: how long the
others take to end, and what they say. Used by trainer.data_parallel and bench_multi_gpu.sh."""
import json
import os
import subprocess
import time


def start(grpo, recipe, out, port, world=2):
    """Starts `world` ranks of `grpo train recipe --output out`; stderr is captured."""
    return [subprocess.Popen([grpo, "train", recipe, "--output", out], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "WORLD_SIZE": str(world), "RANK": str(r), "LOCAL_RANK": str(r),
                                  "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
                                  "MASTER_PORT": str(port)})
            for r in range(world)]


def trained_steps(out):
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    return sum(1 for line in open(path) if '"time_train"' in line)


def wait_for_step(ranks, out, step, timeout):
    """Whether rank 0 logged `step` trained steps before `timeout` seconds or a rank's end."""
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in ranks):
        if trained_steps(out) >= step:
            return True
        time.sleep(0.01)
    return False


def stop_one(ranks, victim, sig, timeout):
    """Sends `sig` to rank `victim`, waits at most `timeout` seconds for rank 0 to end, then kills
    every rank. Returns (rank 0's exit code or None, seconds until it ended, its stderr)."""
    t0 = time.time()
    ranks[victim].send_signal(sig)
    try:
        err = ranks[0].communicate(timeout=timeout)[1]
        code = ranks[0].returncode
    except subprocess.TimeoutExpired:
        ranks[0].kill()
        err = ranks[0].communicate()[1] + f"\n(still running after {timeout} s)"
        code = None
    took = time.time() - t0
    for p in ranks[1:]:
        p.kill()
        p.communicate()
    return code, took, err


def error_line(err):
    """The line of a rank's stderr that says why it ended."""
    lines = [line for line in err.split("\n") if "across ranks failed" in line]
    return (lines[-1] if lines else err.strip()[-300:])[:300]


if __name__ == "__main__":
    # bench_multi_gpu.sh: rank 1 frozen (SIGSTOP) at step 3; one line of JSON.
    import signal
    import sys
    grpo, recipe, out, port = sys.argv[1:5]
    ranks = start(grpo, recipe, out, int(port))
    ok = wait_for_step(ranks, out, 2, 1200)
    code, took, err = stop_one(ranks, 1, signal.SIGSTOP, 900)
    print(json.dumps({"part": "kill", "how": "rank 1 SIGSTOP, no launcher", "seconds_to_end": round(took, 2),
                      "exit": code, "error": error_line(err), "ok": ok and code not in (0, None)}))

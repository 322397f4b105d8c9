"""The trainer under bad input and faults, on CPU with the tiny model:
- a non-finite value in a recipe is refused at load naming the key;
- a loss that turns non-finite stops the run before the update, with a clear line and exit 1;
- a prompt too long for the context is skipped at load and named (file:line);
- SIGTERM lets the step in progress finish, saves it, exits 0, and --resume finishes the run;
- a reward worker killed mid-run: the run carries on with the other and says so;
- a full disk while saving (as root, on a small tmpfs): one line saying so, the last checkpoint
  and `latest` stay valid, and --resume works once space is freed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_helpers import Checks, test_args  # noqa: E402

a = test_args()
check = Checks()


BASE = f"""model_config: {a.source}/recipes/tiny_model.json
task: addition
task_digits: 2
train_size: 200
eval_size: 8
sft_steps: 4
per_step_prompts: 4
num_generations: 4
max_completion_length: 4
eval_every: 0
"""


def recipe(name, body=""):
    path = os.path.join(a.workdir, name + ".yaml")
    with open(path, "w") as f:
        f.write(BASE + body)
    return path


def train(path, *extra, out=None, timeout=300):
    out = out or os.path.join(a.workdir, os.path.basename(path)[:-5])
    return subprocess.run([a.grpo, "train", path, "--output", out, *extra], capture_output=True, text=True,
                          timeout=timeout), out


def train_until(path, out, marker):
    """Starts `grpo train` and reads its console until `marker` appears; returns the process and what it read."""
    p = subprocess.Popen([a.grpo, "train", path, "--output", out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    seen = ""
    while marker not in seen:
        line = p.stdout.readline()
        if not line:
            break
        seen += line
    return p, seen


# Non-finite values are refused at load.
r, _ = train(recipe("inf", "learning_rate: .inf\n"))
check(r.returncode == 1 and "key 'learning_rate': must be a finite number" in r.stderr, "learning_rate: .inf refused: " + r.stderr.strip())
r, _ = train(recipe("nan", "beta: .nan\n"))
check(r.returncode == 1 and "key 'beta': must be a finite number" in r.stderr, "beta: .nan refused: " + r.stderr.strip())

# A loss that blows up stops before the update.
r, out = train(recipe("blowup", "sft_learning_rate: 1.0e+30\n"), "sft_steps=20")
check(r.returncode == 1 and "is not finite" in r.stderr and "stopped before the update" in r.stderr,
      "a non-finite loss stops the run: " + r.stderr.strip().splitlines()[-1])
check(not os.path.exists(os.path.join(out, "checkpoint-0")), "no checkpoint written after the blow-up")

# A prompt longer than the context is skipped at load, named.
data = os.path.join(a.workdir, "long.jsonl")
with open(data, "w") as f:
    for i in range(30):
        f.write(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n")
    f.write(json.dumps({"prompt": "9" * 5000, "answer": "1"}) + "\n")
r, _ = train(recipe("long", f"train_file: {data}\neval_file: {data}\nmax_steps: 1\n"), "task=jsonl", "sft_steps=0")
check(r.returncode == 0 and f"1 prompt longer than the context of 256 tokens skipped: {data}:31 (5000 tokens)" in r.stderr,
      "an over-long prompt is skipped and named: " + next((l for l in r.stderr.splitlines() if "skipped" in l), r.stderr[-300:]))

# SIGTERM: the step finishes and is saved; --resume goes on to the end.
path = recipe("sigterm", "max_steps: 400\nsave_every: 0\n")
out = os.path.join(a.workdir, "sigterm")
p, seen = train_until(path, out, "step 3/400")
p.send_signal(signal.SIGTERM)
rest, _ = p.communicate(timeout=120)
seen += rest
check(p.returncode == 0, f"SIGTERM: exit status {p.returncode}")
stopped = [l for l in seen.splitlines() if "stopped after step" in l]
check(len(stopped) == 1, "SIGTERM: " + (stopped[0] if stopped else seen[-300:]))
latest = open(os.path.join(out, "latest")).read().strip() if os.path.exists(os.path.join(out, "latest")) else ""
step = int(latest.split("-")[1]) if latest.startswith("checkpoint-") else -1
check(step >= 3 and f"stopped after step {step};" in seen, f"SIGTERM: latest is {latest}, the step it stopped after")
r, _ = train(path, "--resume", "max_steps=" + str(step + 2), out=out)
check(r.returncode == 0 and f"resumed from {out}/checkpoint-{step}" in r.stderr and os.path.isdir(f"{out}/checkpoint-{step + 2}"),
      "SIGTERM: --resume finishes the run")

# A reward worker killed mid-run: the other one carries the run.
workers, ports = [], []
for i in range(2):
    pf = os.path.join(a.workdir, f"worker{i}.port")
    workers.append(subprocess.Popen([a.grpo, "reward-worker", "--port", "0", "--port-file", pf, "--rewards", "math"],
                                    stderr=subprocess.DEVNULL))
    for _ in range(200):
        if os.path.exists(pf):
            break
        time.sleep(0.05)
    ports.append(open(pf).read().strip())
path = recipe("workers", f"max_steps: 30\nsave_every: 0\nreward_workers: 127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}\nreward_timeout: 5\n")
out = os.path.join(a.workdir, "workers")
p, seen = train_until(path, out, "step 5/30")
workers[0].kill()
rest, _ = p.communicate(timeout=300)
seen += rest
workers[1].terminate()
check(p.returncode == 0 and "step 30/30" in seen, f"a killed reward worker: the run finished (exit {p.returncode})")
check("reward call failed" in seen and f"retrying on 127.0.0.1:{ports[1]}" in seen,
      "a killed reward worker: the run says so: " + next((l for l in seen.splitlines() if "reward call failed" in l), "no line"))
steps = [json.loads(l)["step"] for l in open(os.path.join(out, "metrics.jsonl")) if json.loads(l).get("step", 0) > 0]
check(steps == list(range(1, 31)), "a killed reward worker: every step logged once")

# A full disk while saving.
if os.geteuid() == 0 and shutil.which("mount"):
    mnt = os.path.join(a.workdir, "small")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", mnt]).returncode == 0:
        try:
            path = recipe("full", "max_steps: 12\nsave_every: 5\n")
            out = os.path.join(mnt, "run")
            r, _ = train(path, out=out)
            last = r.stderr.strip().splitlines()[-1]
            check(r.returncode == 1 and "the disk is full" in last and f"{out}/checkpoint-0, is intact" in last,
                  "a full disk: one line saying so: " + last)
            check(open(os.path.join(out, "latest")).read().strip() == "checkpoint-0" and
                  not os.path.exists(os.path.join(out, "checkpoint-5.tmp")), "a full disk: latest and checkpoint-0 untouched, no partial copy")
            subprocess.run(["mount", "-o", "remount,size=128m", mnt], check=True)
            r, _ = train(path, "--resume", out=out)
            check(r.returncode == 0 and os.path.isdir(os.path.join(out, "checkpoint-12")), "a full disk: --resume finishes once space is freed")
        finally:
            subprocess.run(["umount", mnt])
    else:
        print("skip  full disk: cannot mount a tmpfs here")
else:
    print("skip  full disk: needs root to mount a small tmpfs")
check.finish()

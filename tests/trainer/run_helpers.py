"""What the trainer tests share: their command line and checks, running `grpo train`, reading
metrics.jsonl and safetensors files, and killing a run (SIGKILL, no graceful save) once its metrics
reach a step."""
import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time


def test_args(*required):
    """The command line of a trainer test: --grpo, --source, --workdir and the `required` options
    named; the working folder starts empty."""
    ap = argparse.ArgumentParser()
    for name in ("--grpo", "--source", "--workdir", *required):
        ap.add_argument(name, required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    return a


class Checks:
    """check(ok, what) prints each check as it is made; check.finish() ends the test, failing when
    any check failed."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what):
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if not ok:
            self.failures.append(what)

    def finish(self):
        print("ok" if not self.failures else f"FAIL: {len(self.failures)} checks")
        sys.exit(1 if self.failures else 0)


def train(grpo, recipe, out, *extra):
    """Runs `grpo train RECIPE --output OUT EXTRA...`; exits the test with grpo's stderr if it fails."""
    r = subprocess.run([grpo, "train", recipe, "--output", out, *extra], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"grpo train {' '.join(extra)} failed:\n{r.stderr[-3000:]}")
    return r.stderr


def metrics(path):
    """The lines of a metrics.jsonl the trainer has finished writing. While it runs, or after it was
    killed, the last line may be cut part-way (the trainer drops such a line when it resumes)."""
    text = open(path).read() if os.path.exists(path) else ""
    return [json.loads(l) for l in text.split("\n")[:-1] if l.strip()]


def tensors(path):
    """name -> raw bytes of every tensor in a safetensors file."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = {}
    for k, v in header.items():
        if k != "__metadata__":
            b, e = v["data_offsets"]
            out[k] = data[8 + n + b:8 + n + e]
    return out


def kill_when(grpo, recipe, out, metrics_path, step, timeout=300):
    """Starts (or resumes) a run and SIGKILLs it once metrics_path holds a line at `step` or later."""
    p = subprocess.Popen([grpo, "train", recipe, "--output", out] + (["--resume"] if os.path.exists(out) else []),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(metrics_path) and any(m.get("step", 0) >= step for m in metrics(metrics_path)):
            break
        time.sleep(0.01)
    if p.poll() is not None:
        sys.exit(f"the run ended before step {step} of {metrics_path}")
    p.send_signal(signal.SIGKILL)
    p.wait()

"""The example Python reward worker (grpcio) scores through `grpo reward --workers`: results in
order, per-item errors carried, a bad reward name refused with the worker's message."""
import argparse
import json
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--worker", required=True)
ap.add_argument("--workdir", required=True)
a = ap.parse_args()
os.makedirs(a.workdir, exist_ok=True)
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


port_file = os.path.join(a.workdir, "port")
if os.path.exists(port_file):
    os.remove(port_file)
w = subprocess.Popen([sys.executable, a.worker, "--port", "0", "--port-file", port_file, "--rewards", "exact"])
try:
    for _ in range(300):
        if os.path.exists(port_file) or w.poll() is not None:
            break
        time.sleep(0.05)
    check(os.path.exists(port_file), "python worker started")
    addr = "127.0.0.1:" + open(port_file).read().strip()
    inp, out = os.path.join(a.workdir, "in.jsonl"), os.path.join(a.workdir, "out.jsonl")
    rows = [{"completion": f"work\n{i}", "reference": str(i if i % 3 else i + 1)} for i in range(50)]
    rows.append({"completion": "no reference here"})
    with open(inp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    r = subprocess.run([a.grpo, "reward", "--workers", addr, "--name", "exact,length:0.5", "--input", inp,
                        "--output", out], capture_output=True, text=True)
    check(r.returncode == 0, "grpo reward --workers <python worker> succeeds: " + r.stderr.strip())
    res = [json.loads(l) for l in open(out)]
    check(len(res) == 51, "one result per item")
    want = [1.0 if i % 3 else 0.0 for i in range(50)]
    check([x["components"].get("exact") for x in res[:50]] == want, "exact rewards in input order")
    check(abs(res[0]["reward"] - (0.0 + 0.5 * 0.02)) < 1e-9, "weights applied: " + str(res[0]))
    check(res[50]["error"] is not None and "exact needs a reference" in res[50]["error"], "per-item error carried")
    r = subprocess.run([a.grpo, "reward", "--workers", addr, "--name", "nope", "--input", inp, "--output", out],
                       capture_output=True, text=True)
    check(r.returncode == 1 and "unknown reward 'nope'" in r.stderr, "bad reward refused: " + r.stderr.strip())
finally:
    w.terminate()
    w.wait(timeout=10)
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)

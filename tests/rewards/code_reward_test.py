"""The `code` reward end to end through `grpo reward`, in the sandbox:
  - all 164 HumanEval canonical solutions pass; the same solutions with a deliberate bug
    (numbers off by one, booleans flipped, strings and lists extended) fail;
  - MBPP reference solutions: how many pass (all must, except ones listed with a reason);
  - stdin/stdout cases in Python and C++ (compiled once per item).
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--workdir", required=True)
ap.add_argument("--threads", default="2")
ap.add_argument("--sandbox", required=True, help="grpo-sandbox, to probe the host's isolation")
a = ap.parse_args()
probe = subprocess.run([a.sandbox, "probe"], capture_output=True, text=True)
if probe.returncode != 0:
    print("skipped: " + probe.stdout.strip() + " (code rewards refuse to run here)")
    sys.exit(77)
os.makedirs(a.workdir, exist_ok=True)
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def score(name, rows, tag):
    inp, out = os.path.join(a.workdir, tag + ".in.jsonl"), os.path.join(a.workdir, tag + ".out.jsonl")
    with open(inp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    t0 = time.time()
    # Generous per-test limits: a loaded CI machine must not turn a slow start into a failure.
    env = dict(os.environ, GRPO_CODE_DEBUG="1")
    r = subprocess.run([a.grpo, "reward", "--name", name, "--input", inp, "--output", out, "--threads", a.threads,
                        "--options", json.dumps({"code": {"timeout_s": 30}})], capture_output=True, text=True, env=env)
    for line in r.stderr.splitlines():
        if line.startswith("code reward:"):
            print("     " + line[:300])
    if r.returncode != 0:
        print(r.stderr)
        raise SystemExit(f"grpo reward failed for {tag}")
    res = [json.loads(l) for l in open(out)]
    print(f"     {tag}: {len(rows)} items in {time.time() - t0:.1f} s", flush=True)
    return res


BUG = """

_grpo_original = {ep}
def {ep}(*args, **kwargs):
    r = _grpo_original(*args, **kwargs)
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, (list, tuple)):
        return type(r)(list(r) + [0])
    return 0
"""

path = os.path.join(a.data, "HumanEval.jsonl.gz")
if not os.path.exists(path):
    print("no HumanEval data at", path)
    sys.exit(1)
he = [json.loads(l) for l in gzip.open(path, "rt")]
good, bad = [], []
for p in he:
    meta = {"test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]}
    code = p["prompt"] + p["canonical_solution"]
    good.append({"completion": "```python\n" + code + "\n```", "metadata": meta})
    bad.append({"completion": "```python\n" + code + BUG.format(ep=p["entry_point"]) + "\n```", "metadata": meta})
res = score("code", good, "humaneval")
passed = sum(r["reward"] == 1.0 for r in res)
check(len(he) == 164 and passed == 164, f"HumanEval canonical solutions: {passed}/{len(he)} pass")
for p, r in zip(he, res):
    if r["reward"] != 1.0:
        print("     failed:", p["task_id"], r)
res = score("code", bad, "humaneval_bug")
caught = sum(r["reward"] == 0.0 for r in res)
check(caught == 164, f"HumanEval with a deliberate bug: {caught}/164 fail")

mbpp = [json.loads(l) for l in open(os.path.join(a.data, "mbpp.jsonl"))]
rows = [{"completion": "```python\n" + p["code"] + "\n```",
         "metadata": {"test_list": p["test_list"], "test_setup_code": p.get("test_setup_code", "")}} for p in mbpp]
res = score("code", rows, "mbpp")
full = sum(r["reward"] == 1.0 for r in res)
not_full = [(p["task_id"], r["components"].get("code/passed"), r["components"].get("code/tests"))
            for p, r in zip(mbpp, res) if r["reward"] != 1.0]
print(f"     MBPP reference solutions passing all their tests: {full}/{len(mbpp)}; not all: {not_full}")
check(full == len(mbpp), f"MBPP reference solutions: {full}/{len(mbpp)} pass all asserts")

io_py = {"completion": "Here:\n```python\na, b = map(int, input().split())\nprint(a + b)\n```",
         "metadata": {"tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "10  \n\n"},
                                {"input": "1 1\n", "output": "3\n"}]}}
io_cpp = {"completion": "```cpp\n#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a*b<<std::endl;}\n```",
          "metadata": {"tests": [{"input": "3 4\n", "output": "12\n"}, {"input": "100000 100000\n", "output": "10000000000"}]}}
res = score("code", [io_py, io_cpp], "io")
check(abs(res[0]["reward"] - 2 / 3) < 1e-9, f"stdin/stdout Python: 2 of 3 cases ({res[0]})")
check(res[1]["reward"] == 1.0, f"stdin/stdout C++ compiled once: all cases ({res[1]})")
# Gaming: wrong solutions that try to pass without the tests passing. Each must score 0, and the
# right solution 1, through the same harness.
he_meta = {"prompt": "def add(a, b):\n",
           "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"
                   "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n",
           "entry_point": "add"}
games = {
    "right": "def add(a, b):\n    return a + b\n",
    "sys.exit(0)": "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n",
    "os._exit(0)": "import os\ndef add(a, b):\n    return 0\nos._exit(0)\n",
    "exit() inside the function": "def add(a, b):\n    exit()\n",
    "raise SystemExit": "def add(a, b):\n    raise SystemExit(0)\n",
    "SIGKILL itself": "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "__eq__ always True": "class A:\n    __eq__ = lambda s, o: True\n    __sub__ = lambda s, o: 0\n"
                          "def add(a, b):\n    return A()\n",
    "int subclass with __eq__": "class I(int):\n    def __eq__(s, o): return True\n    def __sub__(s, o): return 0\n"
                                "def add(a, b):\n    return I(0)\n",
    "patched builtins.abs": "import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 5\n",
    "shadowed abs": "def abs(x):\n    return 0\ndef add(a, b):\n    return 5\n",
    "patched math": "import math\nmath.isclose = lambda *a, **k: True\ndef add(a, b):\n    return 5\n",
    "rewritten test file": "open('test.json', 'w').write('{\"mode\": \"mbpp\", \"setup\": \"\", \"assert\": \"\"}')\n"
                           "open('main.py', 'w').write('')\ndef add(a, b):\n    return 0\n",
    "printed a pass line": "import os\nprint('PASSED')\nprint('ok')\nos._exit(0)\n",
    "stdin read for the record": "import sys, os\nprint(sys.stdin.read() + ' PASSED')\nos._exit(0)\n",
}
mbpp_meta = {"test_list": ["assert similar([1, 2], [2, 3]) == {2}", "assert set(similar([1, 2], [2, 3])) == set([2])"]}
mbpp_games = {
    "right": "def similar(a, b):\n    return set(a) & set(b)\n",
    "shadowed set": "def set(x=()):\n    return 0\ndef similar(a, b):\n    return {9}\n",
    "sys.exit in the function": "import sys\ndef similar(a, b):\n    sys.exit(0)\n",
}
rows = [{"completion": "```python\n" + code + "```", "metadata": he_meta} for code in games.values()]
rows += [{"completion": "```python\n" + code + "```", "metadata": mbpp_meta} for code in mbpp_games.values()]
res = score("code", rows, "gaming")
names = list(games) + ["mbpp: " + k for k in mbpp_games]
for name, r in zip(names, res):
    want = 1.0 if name in ("right", "mbpp: right") else 0.0
    check(r["reward"] == want, f"gaming: {name} scores {r['reward']} (want {want})")
print(f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)

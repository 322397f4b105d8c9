#!/usr/bin/env python3
"""grpo's math reward against Math-Verify on a corpus built from the MATH-500 and GSM8K answers:
each gold against itself (boxed in a sentence), against rewritten equivalent forms, and against
perturbed wrong answers. Reports agreement with Math-Verify, agreement with the intended verdict
for each, the disagreements, and single-core check throughput of both in the same run.

    python scripts/bench/math_verify_compare.py --grpo build/bin/grpo --data data
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from fractions import Fraction

ap = argparse.ArgumentParser()
ap.add_argument("--grpo", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--out", default="bench-out/math_verify")
ap.add_argument("--limit", type=int, default=0, help="use only the first N golds of each set (0 = all)")
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)

from math_verify import parse, verify  # noqa: E402  (reference only, from the venv)

golds = []
for line in open(os.path.join(a.data, "math500_test.jsonl")):
    golds.append(("math500", json.loads(line)["answer"]))
    if a.limit and len(golds) >= a.limit:
        break
n_math = len(golds)
for line in open(os.path.join(a.data, "gsm8k_test.jsonl")):
    ans = json.loads(line)["answer"].split("####")[-1].strip().replace(",", "")
    golds.append(("gsm8k", ans))
    if a.limit and len(golds) - n_math >= a.limit:
        break


def rewrites(g):
    """Equivalent forms (intended verdict True)."""
    out = []
    if re.fullmatch(r"-?\d+", g):
        n = int(g)
        out += [f"{n}.0", f"\\frac{{{2 * n}}}{{2}}", f"{n:,}" if abs(n) >= 1000 else f"+{n}" if n > 0 else f"{n}"]
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", g)
    if m:
        sign, p, q = m.group(1), int(m.group(2)), int(m.group(3))
        out.append(f"{sign}{p}/{q}")
        f = Fraction(p, q)
        if 10 ** 6 % f.denominator == 0 or all(d in (2, 5) for d in _factors(f.denominator)):
            out.append(sign + str(float(f)))
    if "\\dfrac" in g:
        out.append(g.replace("\\dfrac", "\\frac"))
    if "\\frac" in g and "\\dfrac" not in g:
        out.append(g.replace("\\frac", "\\dfrac"))
    if "\\sqrt{" in g:
        out.append(re.sub(r"\\sqrt\{(\d)\}", r"\\sqrt\1", g))
    if re.fullmatch(r"\(([^()]*)\)", g):
        out.append("\\left" + g[:-1] + "\\right)")
    if g.endswith("^\\circ"):
        out.append(g[: -len("^\\circ")])
    return [r for r in out if r != g]


def _factors(n):
    fs, d = [], 2
    while d * d <= n:
        while n % d == 0:
            fs.append(d)
            n //= d
        d += 1
    if n > 1:
        fs.append(n)
    return fs


def perturb(g):
    """Wrong answers (intended verdict False)."""
    out = []
    if re.fullmatch(r"-?\d+", g):
        out += [str(int(g) + 1), str(-int(g)) if int(g) != 0 else "1", g + "0"]
    elif re.fullmatch(r"-?\d+\.\d+", g):
        out.append(str(round(float(g) + 0.1, 6)))
    else:
        m = re.search(r"\d+", g)
        if m:
            out.append(g[: m.start()] + str(int(m.group()) + 1) + g[m.end():])
        else:
            out.append(g + "+1")
    return out


cases = []  # (set, kind, gold, pred_completion, intended)
for src, g in golds:
    cases.append((src, "self", g, f"So the final answer is $\\boxed{{{g}}}$.", True))
    for r in rewrites(g):
        cases.append((src, "rewrite", g, f"Therefore the answer is $\\boxed{{{r}}}$.", True))
    for w in perturb(g):
        cases.append((src, "perturbed", g, f"Therefore the answer is $\\boxed{{{w}}}$.", False))

# Math-Verify, single process, as its README uses it.
t0 = time.perf_counter()
mv = []
for _, _, g, pred, _ in cases:
    try:
        mv.append(bool(verify(parse(f"${g}$"), parse(pred))))
    except Exception:
        mv.append(False)
t_mv = time.perf_counter() - t0

# grpo, one thread, through `grpo reward` (its own timer excludes process start-up).
inp = os.path.join(a.out, "cases.jsonl")
with open(inp, "w") as f:
    for _, _, g, pred, _ in cases:
        f.write(json.dumps({"completion": pred, "reference": f"${g}$"}) + "\n")
outp = os.path.join(a.out, "grpo.jsonl")
r = subprocess.run([a.grpo, "reward", "--name", "math", "--input", inp, "--output", outp, "--threads", "1"],
                   capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(r.stderr)
m = re.search(r"([\d.]+) s \(", r.stderr)
t_grpo = float(m.group(1))
ours = [json.loads(l)["reward"] == 1.0 for l in open(outp)]

n = len(cases)
agree = sum(x == y for x, y in zip(ours, mv))
print(f"corpus: {n} checks from {len(golds)} golds (MATH-500 {n_math}, GSM8K {len(golds) - n_math})")
print(f"grpo agrees with Math-Verify on {agree}/{n} = {100 * agree / n:.2f}%")
print()
print("| set | kind | checks | intended verdict | grpo right | Math-Verify right | grpo = Math-Verify |")
print("|---|---|---|---|---|---|---|")
for src in ("math500", "gsm8k"):
    for kind in ("self", "rewrite", "perturbed"):
        idx = [i for i, c in enumerate(cases) if c[0] == src and c[1] == kind]
        if not idx:
            continue
        want = cases[idx[0]][4]
        print(f"| {src} | {kind} | {len(idx)} | {want} | {sum(ours[i] == want for i in idx)} | "
              f"{sum(mv[i] == want for i in idx)} | {sum(ours[i] == mv[i] for i in idx)} |")
print()
print(f"single-core throughput: grpo {n / t_grpo:,.0f} checks/s, Math-Verify {n / t_mv:,.0f} checks/s "
      f"-> {t_mv / t_grpo:.0f}x")
with open(os.path.join(a.out, "disagreements.md"), "w") as f:
    f.write("| set | kind | gold | prediction | intended | grpo | Math-Verify |\n|---|---|---|---|---|---|---|\n")
    for i, c in enumerate(cases):
        if ours[i] != mv[i]:
            f.write(f"| {c[0]} | {c[1]} | `{c[2]}` | `{c[3]}` | {c[4]} | {ours[i]} | {mv[i]} |\n")
print(f"disagreements listed in {a.out}/disagreements.md")

#!/usr/bin/env python3
"""Draws a run's reward curve (training reward per step, smoothed, and greedy eval accuracy) from
metrics.jsonl as a small self-contained SVG (no plotting library needed).

    python3 scripts/plot_metrics.py runs/tiny/metrics.jsonl docs/tiny_reward_curve.svg
"""
import json
import sys

src, dst = sys.argv[1], sys.argv[2]
train, evals = {}, {}
for line in open(src).read().split("\n")[:-1]:  # whole lines: a live run may be writing the last
    if not line.strip():
        continue
    m = json.loads(line)
    if "reward" in m and "loss" in m:
        train[m["step"]] = m["reward"]
    if "eval_accuracy" in m:
        evals[m["step"]] = m["eval_accuracy"]
steps = sorted(train)
smooth, window = [], 25
for i, s in enumerate(steps):
    lo = max(0, i - window + 1)
    vals = [train[t] for t in steps[lo:i + 1]]
    smooth.append((s, sum(vals) / len(vals)))
W, H, L, R, T, B = 640, 320, 50, 20, 20, 40
xmax = max(steps) if steps else 1


def x(s):
    return L + (W - L - R) * s / xmax


def y(v):
    return T + (H - T - B) * (1 - v)


parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>']
for v in (0, 0.25, 0.5, 0.75, 1.0):
    parts.append(f'<line x1="{L}" y1="{y(v):.1f}" x2="{W - R}" y2="{y(v):.1f}" stroke="#ddd"/>')
    parts.append(f'<text x="{L - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
for s in range(0, xmax + 1, max(1, xmax // 5)):
    parts.append(f'<text x="{x(s):.1f}" y="{H - B + 16}" text-anchor="middle">{s}</text>')
parts.append(f'<text x="{(L + W - R) / 2}" y="{H - 6}" text-anchor="middle">GRPO step</text>')
pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in smooth)
parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{pts}"/>')
ev = sorted(evals.items())
pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in ev)
parts.append(f'<polyline fill="none" stroke="#d62728" stroke-width="2" points="{pts}"/>')
for s, v in ev:
    parts.append(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="#d62728"/>')
parts.append(f'<text x="{L + 10}" y="{T + 14}" fill="#1f77b4">training reward (mean of G=8 samples, {window}-step average)</text>')
parts.append(f'<text x="{L + 10}" y="{T + 30}" fill="#d62728">greedy eval accuracy (200 held-out problems)</text>')
parts.append("</svg>")
open(dst, "w").write("\n".join(parts))
print(f"wrote {dst}: {len(steps)} steps, eval at {[s for s, _ in ev]}")

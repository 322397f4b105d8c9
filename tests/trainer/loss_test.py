"""The GRPO objective (trainer/grpo_loss.cpp) against a plain PyTorch implementation of the
published formulas: TRL's GRPO loss (clipped ratio, k3 KL, "grpo" aggregation, group std), DAPO
(clip-higher, token mean over the batch), Dr. GRPO (no std scaling, constant normaliser), and the
k1/k2 KL estimators; rollout importance sampling (token, sequence and geometric ratios of pi_old over
pi_rollout, truncated (TIS) or masked (icepop)); and DeepSeek-V3's sequence-wise MoE balance loss. Loss, gradient with respect to the policy log-probs, and advantages must agree
within 1e-6 (float64) for every variant."""
import argparse
import itertools
import json
import os
import subprocess
import sys

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--probe", required=True)
ap.add_argument("--workdir", required=True)
a = ap.parse_args()
os.makedirs(a.workdir, exist_ok=True)
torch.manual_seed(0)


def reference(c):
    r = torch.tensor(c["rewards"], dtype=torch.float64)
    G = c["G"]
    grouped = r.view(-1, G)
    adv = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if c["scale_rewards"]:
        std = r.std() if c["batch_std"] else grouped.std(1).repeat_interleave(G)
        adv = adv / (std + 1e-4)
    logp = torch.tensor(c["logp"], dtype=torch.float64, requires_grad=True)
    old = torch.tensor(c["old_logp"], dtype=torch.float64)
    ref = torch.tensor(c["ref_logp"], dtype=torch.float64)
    mask = torch.tensor(c["mask"], dtype=torch.float64)
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - c["epsilon_low"], 1 + c["epsilon_high"])
    per_token = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
    stats = None
    if c.get("rollout_is", "off") != "off":
        # Rollout importance sampling as verl and the TIS / icepop write-ups define it: the training
        # forward's pi_old over the inference engine's pi_rollout, per token or per sequence
        # (product, or geometric mean, of the token ratios), truncated at C or masked outside [1/C, C].
        rollout = torch.tensor(c["rollout_logp"], dtype=torch.float64)
        C = c["rollout_is_threshold"]
        log_rho = (old - rollout) * mask
        if c["rollout_is"] == "sequence":
            log_rho = log_rho.sum(-1, keepdim=True)
        elif c["rollout_is"] == "geometric":
            log_rho = log_rho.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)
        rho = torch.exp(torch.clamp(log_rho, -20.0, 20.0))
        if c["rollout_is_mode"] == "truncate":
            w = torch.clamp(rho, max=C)
        else:
            w = torch.where((rho >= 1.0 / C) & (rho <= C), rho, torch.zeros_like(rho))
        per_token = per_token * w
        r, ww = rho.expand_as(mask), w.expand_as(mask)
        real = mask > 0
        stats = {"is_ratio_mean": ((r * mask).sum() / mask.sum()).item(), "is_ratio_min": r[real].min().item(),
                 "is_ratio_max": r[real].max().item(),
                 "is_clipped_fraction": ((ww != r) & real).double().sum().item() / mask.sum().item()}
    if c["beta"] != 0:
        d = ref - logp
        kl = {"k1": -d, "k2": 0.5 * d ** 2, "k3": torch.exp(d) - d - 1}[c["kl"]]
        per_token = per_token + c["beta"] * kl
    if c["loss_type"] == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif c["loss_type"] == "dapo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    else:
        L = c["max_completion_length"] or mask.shape[1]
        loss = (per_token * mask).sum() / (per_token.size(0) * L)
    loss.backward()
    return loss.item(), logp.grad.reshape(-1).tolist(), adv.tolist(), stats


cases = []
for loss_type, beta, kl, scale, batch_std, eps_high in itertools.product(
        ["grpo", "dapo", "dr_grpo"], [0.0, 0.04], ["k1", "k2", "k3"], [True, False], [False, True], [0.2, 0.28]):
    if beta == 0 and kl != "k3":
        continue
    if not scale and batch_std:
        continue
    G, groups, T = 4, 3, 7
    B = G * groups
    lengths = torch.randint(1, T + 1, (B,))
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).double()
    old = -torch.rand(B, T, dtype=torch.float64) * 3
    cases.append({
        "loss_type": loss_type, "beta": beta, "kl": kl, "scale_rewards": scale, "batch_std": batch_std,
        "epsilon_low": 0.2, "epsilon_high": eps_high, "G": G,
        "max_completion_length": 10 if loss_type == "dr_grpo" else 0,
        "rewards": torch.randint(0, 3, (B,)).double().tolist(),
        "old_logp": old.tolist(),
        "logp": (old + torch.randn(B, T, dtype=torch.float64) * 0.3).tolist(),  # ratios on both sides of the clip
        "ref_logp": (old + torch.randn(B, T, dtype=torch.float64) * 0.2).tolist(),
        "mask": mask.tolist(),
    })


# Rollout importance sampling: each level and mode, with the engine's log-probs spread so that some
# ratios pass C (and 1/C), on both loss types that weight tokens differently.
is_cases = []
for level, mode, loss_type, C in itertools.product(["token", "sequence", "geometric"], ["truncate", "mask"],
                                                   ["grpo", "dapo"], [1.5, 2.0]):
    G, groups, T = 4, 3, 7
    B = G * groups
    lengths = torch.randint(1, T + 1, (B,))
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).double()
    old = -torch.rand(B, T, dtype=torch.float64) * 3
    spread = 0.5 if level == "token" else 0.25 if level == "sequence" else 0.8
    is_cases.append({
        "loss_type": loss_type, "beta": 0.04, "kl": "k3", "scale_rewards": True, "batch_std": False,
        "epsilon_low": 0.2, "epsilon_high": 0.28, "G": G, "max_completion_length": 0,
        "rewards": torch.randint(0, 3, (B,)).double().tolist(), "old_logp": old.tolist(),
        "logp": (old + torch.randn(B, T, dtype=torch.float64) * 0.3).tolist(),
        "ref_logp": (old + torch.randn(B, T, dtype=torch.float64) * 0.2).tolist(), "mask": mask.tolist(),
        "rollout_is": level, "rollout_is_mode": mode, "rollout_is_threshold": C,
        "rollout_logp": (old + torch.randn(B, T, dtype=torch.float64) * spread).tolist(),
    })
cases += is_cases


def aux_reference(c):
    """DeepSeek-V3 eqs. 17-20, one sequence at a time over its real tokens, in plain loops."""
    scores = torch.tensor(c["scores"], dtype=torch.float64, requires_grad=True)
    mask = c["mask"]
    B, T = len(mask), len(mask[0])
    E, k = scores.shape[1], len(c["experts"][0])
    total, load = 0.0, [0.0] * E
    for b in range(B):
        tokens = [b * T + t for t in range(T) if mask[b][t]]
        n = max(1, len(tokens))
        count = [0] * E
        for t in tokens:
            for e in c["experts"][t]:
                count[e] += 1
                load[e] += 1
        seq = 0.0
        for i in range(E):
            f_i = E / (k * n) * count[i]
            p_i = sum(scores[t, i] / scores[t].sum() for t in tokens) / n
            seq = seq + f_i * p_i
        total = total + seq
    loss = c["alpha"] * total / B
    loss.backward()
    return loss.item(), scores.grad.reshape(-1).tolist(), load


aux_cases = []
for scoring in ["softmax", "sigmoid"]:
    for trial in range(3):
        B, T, E, k = 3, 6, 8, 2
        logits = torch.randn(B * T, E, dtype=torch.float64)
        scores = logits.softmax(-1) if scoring == "softmax" else logits.sigmoid()
        lengths = torch.randint(1, T + 1, (B,))
        aux_cases.append({"aux": scoring, "alpha": 0.001 * (trial + 1), "scores": scores.tolist(),
                          "experts": scores.topk(k, -1).indices.tolist(),
                          "mask": (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).double().tolist()})
path = os.path.join(a.workdir, "cases.json")
json.dump(cases + aux_cases, open(path, "w"))
r = subprocess.run([a.probe, path], capture_output=True, text=True)
if r.returncode != 0:
    sys.exit(r.stderr)
got = json.loads(r.stdout)
got, got_aux = got[:len(cases)], got[len(cases):]
worst = {"loss": 0.0, "grad": 0.0, "advantages": 0.0}
clipped_cases = 0
is_worst, is_clipped = 0.0, 0
for c, g in zip(cases, got):
    loss, grad, adv, stats = reference(c)
    if stats:
        is_worst = max([is_worst] + [abs(stats[k] - g[k]) for k in stats])
        is_clipped += stats["is_clipped_fraction"] > 0
    worst["loss"] = max(worst["loss"], abs(loss - g["loss"]))
    worst["grad"] = max(worst["grad"], max(abs(x - y) for x, y in zip(grad, g["grad"])))
    worst["advantages"] = max(worst["advantages"], max(abs(x - y) for x, y in zip(adv, g["advantages"])))
    clipped_cases += g["clip_fraction"] > 0
print(f"{len(cases)} variants (loss_type x beta x kl x std scaling x group/batch std x clip-higher); "
      f"{clipped_cases} with clipped tokens")
print("max |grpo - reference|: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
print(f"{len(is_cases)} rollout importance-sampling variants (token/sequence/geometric x truncate/mask x grpo/dapo x "
      f"C 1.5/2), {is_clipped} with truncated or masked weights: included above; ratio statistics max |diff| "
      f"{is_worst:.2e}")
aux_worst = {"loss": 0.0, "grad": 0.0, "load": 0.0}
for c, g in zip(aux_cases, got_aux):
    loss, grad, load = aux_reference(c)
    aux_worst["loss"] = max(aux_worst["loss"], abs(loss - g["loss"]) / c["alpha"])
    aux_worst["grad"] = max(aux_worst["grad"], max(abs(x - y) for x, y in zip(grad, g["grad"])) / c["alpha"])
    aux_worst["load"] = max(aux_worst["load"], max(abs(x - y) for x, y in zip(load, g["load"])))
print(f"{len(aux_cases)} sequence-wise balance loss cases (softmax and sigmoid scores, padded sequences); "
      "max |grpo - reference| / alpha: " + ", ".join(f"{k} {v:.2e}" for k, v in aux_worst.items()))
ok = all(v < 1e-6 for v in worst.values()) and clipped_cases > len(cases) // 2
ok = ok and is_worst < 1e-6 and is_clipped >= len(is_cases) * 3 // 4
ok = ok and all(v < 1e-6 for v in aux_worst.values())
print("ok" if ok else "FAIL")
sys.exit(0 if ok else 1)

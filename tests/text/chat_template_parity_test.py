#!/usr/bin/env python3
"""Chat-template parity: `grpo chat-template` renders every conversation exactly as transformers'
`apply_chat_template(conversation, tokenize=False)` does, character for character.

Templates (tests/text/chat_templates): DeepSeek-R1, Qwen2.5, Qwen3, Llama 3.1, Gemma and
Mistral-Instruct, as their tokenizer_config.json files ship them, plus `subset.jinja`, which uses
the rest of the supported Jinja subset (macros, block set, loop filters, slicing, filters, tests)
with plain tags so that trim_blocks and lstrip_blocks show. Each is saved into a tokenizer
directory by transformers itself (save_pretrained), which grpo then loads.

Conversations (tests/text/chat_conversations.jsonl): single and multi-turn, system prompts,
<think> replies, reasoning_content, tool calls with string and object arguments, tool schemas,
Unicode, quotes and template-like text inside messages, empty and whitespace-padded contents,
roles out of order. Each renders with add_generation_prompt false and true. Where transformers
raises (a template's raise_exception, a type error), grpo must fail too, naming the template.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
SPECIALS = {
    "deepseek_r1": dict(bos_token="<｜begin▁of▁sentence｜>", eos_token="<｜end▁of▁sentence｜>"),
    "qwen2_5": dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    "qwen3": dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    "llama3_1": dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
    "gemma": dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"),
    "mistral": dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
    "subset": dict(bos_token="<s>", eos_token="</s>"),
}


def make_tokenizer(name, template, out_dir, in_config):
    specials = SPECIALS[name]
    vocab = {"[UNK]": 0}
    for t in specials.values():
        vocab.setdefault(t, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **specials)
    tok.chat_template = template
    tok.save_pretrained(out_dir)
    if in_config:  # as most released checkpoints ship it: a string in tokenizer_config.json
        jinja = os.path.join(out_dir, "chat_template.jinja")
        if os.path.exists(jinja):
            os.remove(jinja)
        with open(os.path.join(out_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        config["chat_template"] = template
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)
    return tok


def check_errors(grpo, workdir):
    """Unsupported or malformed templates are errors naming the template line."""
    cases = [
        ("{{ bos_token }}\n{% for m in messages %}\n{% include 'other.jinja' %}{% endfor %}", "line 3", "include"),
        ("{% if messages %}\nno end", "line", "endif"),
        ("{{ messages[0].content\n", "line 1", "never closed"),
        ("a\nb\n{{ messages | nosuchfilter }}", "line 3", "nosuchfilter"),
        ("{{ 'x' + 1 }}", "line 1", "unsupported operand"),
    ]
    ok = True
    conv = os.path.join(workdir, "err_conv.jsonl")
    with open(conv, "w") as f:
        f.write(json.dumps([{"role": "user", "content": "hi"}]) + "\n")
    for i, (template, where, what) in enumerate(cases):
        d = os.path.join(workdir, f"err{i}")
        os.makedirs(d)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"chat_template": template}, f)
        p = subprocess.run([grpo, "chat-template", "--model", d, "--input", conv], capture_output=True, text=True)
        fine = p.returncode != 0 and where in p.stderr and what in p.stderr and "tokenizer_config.json" in p.stderr
        ok &= fine
        print(f"{'PASS' if fine else 'FAIL'} error case {i}: {p.stderr.strip()}")
    return ok


def render_ref(tok, row, gen):
    kwargs = {k: v for k, v in row.items() if k not in ("messages", "tools")}
    try:
        return True, tok.apply_chat_template(row["messages"], tools=row.get("tools"), tokenize=False,
                                             add_generation_prompt=gen, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure of the reference is an expected failure for grpo
        return False, f"{type(e).__name__}: {e}"


def run_grpo(grpo, model_dir, rows, gen, path):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    cmd = [grpo, "chat-template", "--model", model_dir, "--input", path]
    if gen:
        cmd.append("--add-generation-prompt")
    p = subprocess.run(cmd, capture_output=True)
    return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8", "replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    with open(os.path.join(HERE, "chat_conversations.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    ok = True
    total = failures_matched = 0
    for name in SPECIALS:
        with open(os.path.join(HERE, "chat_templates", f"{name}.jinja"), encoding="utf-8") as f:
            template = f.read()
        model_dir = os.path.join(a.workdir, name)
        tok = make_tokenizer(name, template, model_dir, in_config=list(SPECIALS).index(name) % 2 == 0)
        for gen in (False, True):
            refs = [render_ref(tok, r, gen) for r in rows]
            good = [i for i, (fine, _) in enumerate(refs) if fine]
            rc, out, err = run_grpo(a.grpo, model_dir, [rows[i] for i in good], gen,
                                    os.path.join(a.workdir, f"{name}.{gen}.jsonl"))
            if rc != 0:
                print(f"FAIL {name} add_generation_prompt={gen}: grpo failed: {err.strip()}")
                ok = False
                continue
            ours = [json.loads(line) for line in out.splitlines()]
            bad = [i for k, i in enumerate(good) if k >= len(ours) or ours[k] != refs[i][1]]
            for i in bad[:3]:
                k = good.index(i)
                print(f"  conversation {i}:\n    hf   {refs[i][1]!r}\n    grpo {(ours[k] if k < len(ours) else None)!r}")
            # Every conversation the reference refuses, grpo refuses too, naming the template and line.
            refused_ok = 0
            for i, (fine, msg) in enumerate(refs):
                if fine:
                    continue
                rc1, _, err1 = run_grpo(a.grpo, model_dir, [rows[i]], gen, os.path.join(a.workdir, "one.jsonl"))
                if rc1 != 0 and "line " in err1:
                    refused_ok += 1
                else:
                    print(f"  conversation {i}: transformers raised {msg!r}, grpo: rc={rc1} {err1.strip()!r}")
                    bad.append(i)
            n_refused = len(rows) - len(good)
            total += len(rows)
            failures_matched += refused_ok
            status = "PASS" if not bad else "FAIL"
            ok &= not bad
            print(f"{status} {name} add_generation_prompt={gen}: {len(good) - len([b for b in bad if b in good])}/{len(good)} "
                  f"renders identical, {refused_ok}/{n_refused} refusals matched")
    ok &= check_errors(a.grpo, a.workdir)
    print(f"{'PASS' if ok else 'FAIL'}: {total} renders over {len(SPECIALS)} templates ({failures_matched} expected refusals)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Tokenizer parity: `grpo tokenize` equals Hugging Face `tokenizers` id for id.

Trains four real byte-level BPE tokenizer.json files with `tokenizers`, each with the
pre-tokenization of a model family:
  - deepseek_v3: Sequence of Split regexes (digits in threes, CJK runs, DeepSeek-V3's main regex with
    the \\s+(?!\\S) lookahead) + ByteLevel without regex; BOS added by TemplateProcessing;
  - qwen2: NFC normaliser + Qwen2's Split regex + ByteLevel; <|im_start|>-style special tokens;
  - llama3: Llama 3's Split regex + ByteLevel; a Sequence post-processor (ByteLevel, then BOS by
    TemplateProcessing), as Llama 3 ships it;
  - gpt2: ByteLevel with the GPT-2 regex and add_prefix_space.
The corpus: English, Chinese, Japanese, Korean, Russian, Arabic, emoji, code, LaTeX and odd
whitespace (tests/text/corpus_multilingual.txt), plus GSM8K, MATH-500, HumanEval and MBPP texts
from ../shared/data/benchmarks. Every text is encoded with and without special tokens, and
decoded back, by both implementations.
"""
import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
DEEPSEEK_MAIN = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
                 " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+")
QWEN2 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
         "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# Llama 3's Split regex: Qwen2's with digits in runs of up to three.
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")


def load_corpus(shared):
    texts = []
    with open(os.path.join(HERE, "corpus_multilingual.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    texts += lines
    texts.append("\n".join(lines))  # one long multi-line text
    found = []
    if shared and os.path.isdir(os.path.join(shared, "benchmarks")):
        b = os.path.join(shared, "benchmarks")

        def jsonl(name, opener=open):
            with opener(os.path.join(b, name), "rt", encoding="utf-8") as f:
                return [json.loads(l) for l in f if l.strip()]
        for r in jsonl("gsm8k_test.jsonl")[:400]:
            texts += [r["question"], r["answer"]]
        for r in jsonl("math500_test.jsonl")[:300]:
            texts += [r["problem"], r["solution"], str(r["answer"])]
        for r in jsonl("HumanEval.jsonl.gz", gzip.open):
            texts += [r["prompt"], r["canonical_solution"], r["test"]]
        for r in jsonl("mbpp.jsonl")[:300]:
            texts += [r["text"], r["code"]]
        found = ["gsm8k", "math500", "HumanEval", "mbpp"]
    else:
        print(f"note: {shared}/benchmarks not found; using the in-repo corpus only")
    return [t for t in texts if t is not None], found


def build(kind, texts):
    tok = Tokenizer(models.BPE())
    if kind == "deepseek_v3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex("\\p{N}{1,3}"), "isolated"),
            pre_tokenizers.Split(Regex("[一-龥぀-ゟ゠-ヿ]+"), "isolated"),
            pre_tokenizers.Split(Regex(DEEPSEEK_MAIN), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        special = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]
        extra = ["<think>", "</think>"]
    elif kind == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        extra = []
    elif kind == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3), "isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        special = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        extra = []
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        special = ["<|endoftext|>"]
        extra = []
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=3000, min_frequency=2, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    if extra:
        tok.add_tokens(extra)
    if kind == "deepseek_v3":
        bos = special[0]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    elif kind == "llama3":  # as Llama 3 ships it: ByteLevel offsets, then BOS
        bos = special[0]
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def run_grpo(grpo, path, texts, workdir, tag, special):
    inp = os.path.join(workdir, f"{tag}.in.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    cmd = [grpo, "tokenize", "--tokenizer", path, "--input", inp, "--jsonl"]
    if not special:
        cmd.append("--no-special-tokens")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split("\n")
    return [[int(x) for x in line.split()] for line in out[:len(texts)]]


def run_grpo_decode(grpo, path, id_lists, workdir, tag):
    inp = os.path.join(workdir, f"{tag}.ids.txt")
    with open(inp, "w") as f:
        for ids in id_lists:
            f.write(" ".join(map(str, ids)) + "\n")
    out = subprocess.run([grpo, "tokenize", "--tokenizer", path, "--input", inp, "--decode", "--jsonl"],
                         check=True, capture_output=True).stdout.decode("utf-8").split("\n")
    return [json.loads(line) for line in out[:len(id_lists)]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpo", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--shared-data", default=os.path.join(HERE, "..", "..", "..", "shared", "data"))
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    texts, sources = load_corpus(a.shared_data)
    # Added/special tokens inside running text, and texts made of them only.
    texts += ["Hello<think>world</think>!", "<｜begin▁of▁sentence｜>x<｜end▁of▁sentence｜>",
              "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "", " ", "\n\n\n", "a  \n  b",
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n12345 + 678<|eot_id|>"]
    ok = True
    for kind in ["deepseek_v3", "qwen2", "llama3", "gpt2"]:
        tok = build(kind, texts[::2])  # trained on half, tested on all
        path = os.path.join(a.workdir, f"{kind}.tokenizer.json")
        tok.save(path)
        n_tokens = 0
        for special in (True, False):
            ref = [e.ids for e in tok.encode_batch(texts, add_special_tokens=special)]
            ours = run_grpo(a.grpo, path, texts, a.workdir, f"{kind}.{special}", special)
            bad = [i for i in range(len(texts)) if ref[i] != ours[i]]
            n_tokens += sum(len(r) for r in ref)
            for i in bad[:5]:
                print(f"  {kind} special={special} text {i!r}: {texts[i][:80]!r}\n    hf   {ref[i][:40]}\n    grpo {ours[i][:40]}")
            if bad:
                ok = False
            print(f"{'PASS' if not bad else 'FAIL'} {kind} encode add_special_tokens={special}: "
                  f"{len(texts) - len(bad)}/{len(texts)} texts identical")
        ids = [e.ids for e in tok.encode_batch(texts)]
        ref_dec = tok.decode_batch(ids, skip_special_tokens=False)
        our_dec = run_grpo_decode(a.grpo, path, ids, a.workdir, kind)
        bad = [i for i in range(len(texts)) if ref_dec[i] != our_dec[i]]
        for i in bad[:5]:
            print(f"  {kind} decode text {i}: hf {ref_dec[i][:60]!r} grpo {our_dec[i][:60]!r}")
        ok &= not bad
        print(f"{'PASS' if not bad else 'FAIL'} {kind} decode: {len(texts) - len(bad)}/{len(texts)} identical "
              f"({n_tokens} tokens compared; vocab {tok.get_vocab_size()})")
    print("corpus:", len(texts), "texts; shared benchmarks:", ", ".join(sources) or "none")
    print("tokenizer parity:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

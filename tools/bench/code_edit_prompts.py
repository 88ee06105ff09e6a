#!/usr/bin/env python3
"""Writes a JSONL of code-editing prompts for `gale batch` (the OpenAI batch format: one
{"custom_id", "method", "url", "body"} per line, body for /v1/completions): "here is a file,
rewrite it with these small changes", the file taken from this repository's sources. The
output mostly copies the prompt, the traffic where the n-gram and suffix proposers of issue 19
are meant to pay (speculative decoding on code edits).

    python3 tools/bench/code_edit_prompts.py [-o OUT.jsonl] [--count 24] [--max-chars 800]
        [--context 1024] [--gale build/gale --model models/default]

Deterministic: the same tree and arguments give the same bytes (files in sorted order, spread
evenly; the edits drawn from a generator seeded by the file's path). Standard library only.

Each file is cut to its first whole lines within --max-chars (the bundled model's context is
1024 tokens and the rewrite is as long as the file). max_tokens leaves room for the rewrite plus
a margin within --context: counted exactly with `gale tokenize` when --gale and --model are
given, otherwise estimated at 2 characters a token (what the bundled tokenizer gives on C++),
and a file whose prompt would not fit is skipped.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE_DIRS = ("src", "tools")
EXTENSIONS = (".h", ".cpp", ".py")
CHARS_PER_TOKEN = 2.0

# Reserved words are never renamed: the edit is to read as a rename a reviewer would ask for.
KEYWORDS = set("""alignas auto bool break case catch char class const constexpr continue default delete do double
else enum explicit extern false float for friend if inline int long namespace new noexcept nullptr operator private
protected public return short signed sizeof static struct switch template this throw true try typedef typename union
unsigned using virtual void volatile while include define pragma once std size_t int32_t int64_t uint8_t uint32_t
uint64_t def import from as in is not and or None True False self pass lambda with yield raise except finally elif
print len range str list dict set tuple return""".split())


def source_files():
    out = []
    for d in SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, d)):
            dirnames.sort()
            for f in sorted(filenames):
                if f.endswith(EXTENSIONS):
                    out.append(os.path.relpath(os.path.join(dirpath, f), ROOT))
    return sorted(out)


def head_lines(text, max_chars):
    kept, size = [], 0
    for line in text.splitlines(keepends=True):
        if size + len(line) > max_chars:
            break
        kept.append(line)
        size += len(line)
    return "".join(kept)


def choose_edits(path, text):
    """Up to three small edits the text allows: rename an identifier used at least twice, change
    a number, drop a comment line."""
    rng = random.Random(path)
    edits = []
    # The file's own names: not on include / import lines, not a namespace (`std::x`, `gale::`).
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith(("#include", "import ", "from ")))
    foreign = set(re.findall(r"\b([A-Za-z_]\w*)::", code)) | set(re.findall(r"::([A-Za-z_]\w*)", code))
    counts = {}
    for w in re.findall(r"\b[A-Za-z_][A-Za-z0-9_]{3,}\b", code):
        if w not in KEYWORDS and w not in foreign:
            counts[w] = counts.get(w, 0) + 1
    names = sorted(w for w, c in counts.items() if c >= 2)
    if names:
        old = rng.choice(names)
        edits.append(f"rename `{old}` to `{old}_v2` everywhere")
    numbers = sorted(set(re.findall(r"(?<![\w.])\d{1,4}(?![\w.])", text)))
    if numbers:
        n = rng.choice(numbers)
        edits.append(f"change the number {n} to {int(n) * 2 + 1}")
    marker = "#" if path.endswith(".py") else "//"
    comments = [l.strip() for l in text.splitlines() if l.strip().startswith(marker) and len(l.strip()) > 12]
    if comments:
        edits.append(f"delete the comment line `{rng.choice(comments)}`")
    if not edits:
        edits.append("add a blank line at the end")
    return edits


def make_prompt(path, text, edits):
    changes = "\n".join(f"- {e}" for e in edits)
    return (f"Rewrite the file below with these changes, and output the whole rewritten file:\n{changes}\n\n"
            f"File {path}:\n```\n{text}```\n\nRewritten file:\n```\n")


def token_count(gale, model, text):
    out = subprocess.run([gale, "tokenize", "-m", model, "--text", text, "--json", "--no-special"],
                         check=True, capture_output=True, text=True).stdout
    return len(json.loads(out)["ids"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default="-", help="output JSONL (default: stdout)")
    ap.add_argument("--count", type=int, default=24, help="prompts to write (default 24)")
    ap.add_argument("--max-chars", type=int, default=800, help="characters of each file kept (default 800)")
    ap.add_argument("--context", type=int, default=1024, help="the model's context in tokens (default 1024)")
    ap.add_argument("--gale", help="gale binary, to count tokens exactly (with --model)")
    ap.add_argument("--model", help="model folder whose tokenizer counts the tokens")
    args = ap.parse_args()
    if bool(args.gale) != bool(args.model):
        ap.error("--gale and --model go together")

    files = source_files()
    stride = max(1, len(files) // max(1, args.count))
    lines = []
    for path in files[::stride]:
        if len(lines) == args.count:
            break
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            text = head_lines(f.read(), args.max_chars)
        if len(text) < args.max_chars // 4:
            continue  # too short to be worth rewriting
        prompt = make_prompt(path, text, choose_edits(path, text))
        if args.gale:
            prompt_tokens, file_tokens = (token_count(args.gale, args.model, prompt),
                                          token_count(args.gale, args.model, text))
        else:
            prompt_tokens, file_tokens = (int(len(prompt) / CHARS_PER_TOKEN) + 1,
                                          int(len(text) / CHARS_PER_TOKEN) + 1)
        # The rewrite, a margin for the edits and the closing fence, within the context.
        max_tokens = min(file_tokens + file_tokens // 8 + 16, args.context - prompt_tokens)
        if max_tokens < file_tokens:
            continue
        lines.append({
            "custom_id": f"code-edit-{len(lines):03d}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stop": ["```"]},
        })
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")
    for line in lines:
        out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
    if out is not sys.stdout:
        out.close()
    print(f"code_edit_prompts: {len(lines)} prompts from {len(files)} source files", file=sys.stderr)


if __name__ == "__main__":
    main()

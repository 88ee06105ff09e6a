#!/usr/bin/env python3
"""The C API against the CLI: capi_test (a C program linked with libgale.so) runs several
prompts at once, greedy, through include/gale.h; each result must equal what `gale generate
--json` gives for that prompt alone (ids, text, finish reason). capi_test checks the error paths
itself and exits 1 on any failure.

    run_capi_test.py GALE_BINARY CAPI_TEST MODEL_DIR
"""
import json
import subprocess
import sys

PROMPTS = ["def fibonacci(n):", "import numpy as np\n", "class Stack:\n    def push(self, x):", "#"]
MAX_TOKENS = 40


def main():
    gale, capi_test, model = sys.argv[1:4]
    run = subprocess.run([capi_test, model, str(MAX_TOKENS)] + PROMPTS, capture_output=True, text=True, timeout=600)
    sys.stdout.write(run.stdout)
    sys.stderr.write(run.stderr)
    if run.returncode != 0 or "OK" not in run.stdout.split():
        sys.exit(f"capi_test failed (exit {run.returncode})")
    results = {}
    for line in run.stdout.splitlines():
        if line.startswith("RESULT "):
            _, index, reason, ids, text = line.split(" ")
            results[int(index)] = {
                "finish_reason": reason,
                "ids": [] if ids == "-" else [int(t) for t in ids.split(",")],
                "text": "" if text == "-" else bytes.fromhex(text).decode("utf-8"),
            }
    if sorted(results) != list(range(len(PROMPTS))):
        sys.exit(f"capi_test printed results for {sorted(results)}")
    bad = 0
    for i, prompt in enumerate(PROMPTS):
        cli = subprocess.run([gale, "generate", "-m", model, "-p", prompt, "-n", str(MAX_TOKENS), "--temperature", "0",
                              "--json"], capture_output=True, text=True, timeout=600, check=True)
        want = json.loads(cli.stdout)
        got = results[i]
        for key in ("ids", "text", "finish_reason"):
            if got[key] != want[key]:
                print(f"prompt {i} {prompt!r}: {key} differs:\n  C API: {got[key]!r}\n  CLI:   {want[key]!r}")
                bad += 1
        if not got["ids"]:
            print(f"prompt {i}: no tokens generated")
            bad += 1
    sampled = [line.split(" ")[1] for line in run.stdout.splitlines() if line.startswith("SAMPLED ")]
    want = subprocess.run([gale, "generate", "-m", model, "-p", PROMPTS[0], "-n", str(MAX_TOKENS), "--json",
                           "--temperature", "0.9", "--top-k", "50", "--top-p", "0.9", "--min-p", "0.05", "--seed",
                           "1234", "--presence-penalty", "1.5", "--frequency-penalty", "0.5",
                           "--repetition-penalty", "1.1", "--speculative", "off"],
                          capture_output=True, text=True, timeout=600, check=True)
    want_ids = ",".join(map(str, json.loads(want.stdout)["ids"]))
    if sampled != [want_ids]:
        print(f"seeded sampling differs:\n  C API: {sampled}\n  CLI:   {want_ids}")
        bad += 1
    if bad:
        sys.exit(f"{bad} differences between the C API and gale generate")
    print(f"{len(PROMPTS)} prompts: the C API's batched greedy output equals gale generate --json")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The in-process Python API on the bundled model: what batching N prompts in one generate() call
gives over N calls one by one, and what streaming costs per token over generate(). Prints one
JSON object (medians over --reps runs).

    PYTHONPATH=build/python python3 bench/api_bench.py [--prompts 16] [--tokens 64] [--reps 5]
"""
import argparse
import json
import statistics
import time

import gale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/default")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    llm = gale.LLM(model=a.model, max_num_seqs=max(a.prompts, 1), speculative="off", enable_prefix_caching=False,
                   threads=a.threads)
    params = gale.SamplingParams(max_tokens=a.tokens, temperature=0, ignore_eos=True)
    prompts = [f"def function_{i}(x, y):\n    return" for i in range(a.prompts)]
    llm.generate(prompts[:2], params)  # warm-up

    def batched():
        return sum(len(o.outputs[0].token_ids) for o in llm.generate(prompts, params))

    def one_by_one():
        return sum(len(llm.generate(p, params)[0].outputs[0].token_ids) for p in prompts)

    def one():
        return len(llm.generate(prompts[0], params)[0].outputs[0].token_ids)

    def streamed():
        return sum(len(p.token_ids) for p in llm.generate_stream(prompts[0], params))

    # The modes alternate within each repetition, so a shared machine's drift hits them alike.
    modes = {"batched": batched, "one_by_one": one_by_one, "one": one, "streamed": streamed}
    times = {k: [] for k in modes}
    tokens = {}
    for _ in range(a.reps):
        for k, f in modes.items():
            t0 = time.perf_counter()
            tokens[k] = f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    nb, ns, n1, nst = tokens["batched"], tokens["one_by_one"], tokens["one"], tokens["streamed"]
    tb, ts, t1, tst = med["batched"], med["one_by_one"], med["one"], med["streamed"]
    print(json.dumps({
        "model": a.model, "prompts": a.prompts, "max_tokens": a.tokens, "reps": a.reps,
        "batched_tokens_per_s": nb / tb, "one_by_one_tokens_per_s": ns / ts, "batched_speedup": (nb / tb) / (ns / ts),
        "generate_ms_per_token": 1000 * t1 / n1, "stream_ms_per_token": 1000 * tst / nst,
        "stream_overhead_ms_per_token": 1000 * (tst / nst - t1 / n1),
    }))


if __name__ == "__main__":
    main()

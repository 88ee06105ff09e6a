#!/usr/bin/env python3
"""tools/bench-compare.py over tests/fixtures/bench/rows.jsonl, whose medians and ratios are known:
decode_tokens_per_s 12 (rows 10, 12, 30) -> 16.5 (15, 18) = 1.375; a "-dirty" row, a row of another
machine and one of other settings must not enter them. Run by ctest as BenchCompare."""
import json
import os
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "bench-compare.py")
ROWS = os.path.join(ROOT, "tests", "fixtures", "bench", "rows.jsonl")
BASE, CAND = "aaaa1111bbbb", "cccc2222dddd"


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=ROOT, check=False)


def figures(*args):
    r = run("--json", *args, ROWS)
    assert r.returncode == 0, r.stderr
    return {(e["group"]["mode"], e["figure"]): e for e in json.loads(r.stdout)}


class BenchCompare(unittest.TestCase):
    def test_medians_and_ratios(self):
        f = figures("--baseline", BASE, "--candidate", CAND)
        d = f[("kernels", "decode_tokens_per_s")]
        self.assertEqual(d["baseline"], {"median": 12.0, "rows": 3})
        self.assertEqual(d["candidate"], {"median": 16.5, "rows": 2})
        self.assertAlmostEqual(d["ratio"], 1.375)
        self.assertAlmostEqual(f[("kernels", "prompt_tokens_per_s")]["ratio"], 0.6)
        self.assertAlmostEqual(f[("throughput", "output_tokens_per_s[concurrency=2]")]["ratio"], 1.5)
        # Only the tokens/s figures by default, one group per mode (not the other machine's or threads').
        self.assertNotIn(("kernels", "load_s"), f)
        self.assertEqual(len(f), 6)
        self.assertEqual({e["group"]["machine"] for e in f.values()}, {"Test CPU 9000"})

    def test_hash_prefixes_patterns_and_dirty_trees(self):
        f = figures("--baseline", "aaaa", "--candidate", CAND[:8], "--figure", "load_s")
        self.assertEqual(list(f), [("kernels", "load_s")])
        f = figures("--baseline", BASE, "--candidate", CAND + "-dirty", "--figure", "decode_tokens_per_s")
        self.assertAlmostEqual(f[("kernels", "decode_tokens_per_s")]["ratio"], 1000 / 12)

    def test_markdown_table(self):
        r = run("--baseline", BASE, "--candidate", CAND, ROWS)
        self.assertEqual(r.returncode, 0, r.stderr)
        row = [line for line in r.stdout.splitlines() if "| decode_tokens_per_s |" in line]
        self.assertEqual(len(row), 1, r.stdout)
        self.assertIn("| 12 (n=3) | 16.5 (n=2) | 1.375 |", row[0])
        self.assertIn("rows.jsonl:11: skipped", r.stderr)  # the torn last line

    def test_unknown_commit_fails(self):
        r = run("--baseline", BASE, "--candidate", "ffff9999", ROWS)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no row has the candidate commit ffff9999", r.stderr)


if __name__ == "__main__":
    unittest.main()

#!/usr/bin/env python3
"""Compare the `gale bench --record` rows of two commits (llama.cpp's compare-llama-bench.py habit).

    tools/bench-compare.py --baseline COMMIT --candidate COMMIT [FILE.jsonl ...] [--json]
                           [--figure PATTERN ...]

FILES default to bench/results/bench.jsonl. Rows are grouped by everything that is not a measured
figure: the strings, booleans and integers of a row (model, machine, device, dtype, threads,
prompt_tokens, gen_tokens, mode, ...), leaving out commit, date and record_format. The figures are
its floating-point numbers (but gpu_memory_utilization, a setting); a row of --mode throughput or shared-prefix contributes one figure per
entry of its "results" list, named like `output_tokens_per_s[concurrency=4]`. Where a commit has
several rows in a group, the median is compared. ratio = candidate / baseline: above 1 is faster
for a rate (tokens/s, GB/s), slower for a time (seconds).

A COMMIT matches a row's commit when one is a prefix of the other (at least 4 hex digits), and a
"-dirty" row only matches a COMMIT that ends in "-dirty". A name git knows (HEAD~1, main) is
resolved with git when no row matches it as written.

Markdown by default; --json prints a list of objects. Standard library only. Exit status 1 when no
group has rows of both commits.
"""
import argparse
import fnmatch
import json
import statistics
import subprocess
import sys

DEFAULT_FILE = "bench/results/bench.jsonl"
NOT_A_KEY = {"commit", "date", "record_format"}
SETTING_FLOATS = {"gpu_memory_utilization"}  # floats that are settings, not measurements
ENTRY_LABELS = ("concurrency", "prefix_cache")  # what names an entry of "results"


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_rows(paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    print(f"{path}:{n}: skipped, not JSON ({e.msg})", file=sys.stderr)
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("commit"), str):
                    print(f"{path}:{n}: skipped, not a bench row (no commit)", file=sys.stderr)
                    continue
                rows.append(row)
    return rows


def split_row(row):
    """(group key as a sorted tuple of (name, value), {figure: value})."""
    key, figures = [], {}
    for name, v in row.items():
        if name in NOT_A_KEY:
            continue
        if name == "results" and isinstance(v, list):
            for i, entry in enumerate(v):
                if not isinstance(entry, dict):
                    continue
                label = next((f"{k}={json.dumps(entry[k])}" for k in ENTRY_LABELS if k in entry), str(i))
                for fname, fv in entry.items():
                    if fname not in ENTRY_LABELS and is_number(fv):
                        figures[f"{fname}[{label}]"] = float(fv)
        elif isinstance(v, float) and name not in SETTING_FLOATS:
            figures[name] = v
        elif isinstance(v, (str, bool, int, float)) or v is None:
            key.append((name, v))
    return tuple(sorted(key, key=lambda kv: kv[0])), figures


def parse_commit(c):
    dirty = c.endswith("-dirty")
    return (c[: -len("-dirty")] if dirty else c).lower(), dirty


def matches(arg, commit):
    if arg == commit:
        return True
    (a, a_dirty), (c, c_dirty) = parse_commit(arg), parse_commit(commit)
    if a_dirty != c_dirty or min(len(a), len(c)) < 4:
        return False
    return a.startswith(c) or c.startswith(a)


def resolve(arg, commits):
    """The commits of the rows that arg names: as written, else through git rev-parse."""
    found = {c for c in commits if matches(arg, c)}
    if found:
        return found
    name, dirty = (arg[: -len("-dirty")], True) if arg.endswith("-dirty") else (arg, False)
    try:
        full = subprocess.run(["git", "rev-parse", "--verify", "--quiet", name + "^{commit}"],
                              capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return set()
    if not full:
        return set()
    full += "-dirty" if dirty else ""
    return {c for c in commits if matches(full, c)}


def compare(rows, baseline, candidate, patterns):
    commits = {r["commit"] for r in rows}
    base_ids, cand_ids = resolve(baseline, commits), resolve(candidate, commits)
    if not base_ids:
        sys.exit(f"no row has the baseline commit {baseline} (commits seen: {', '.join(sorted(commits)) or 'none'})")
    if not cand_ids:
        sys.exit(f"no row has the candidate commit {candidate} (commits seen: {', '.join(sorted(commits)) or 'none'})")
    # group key -> side -> figure -> values
    groups = {}
    for r in rows:
        side = "baseline" if r["commit"] in base_ids else "candidate" if r["commit"] in cand_ids else None
        if side is None:
            continue
        key, figures = split_row(r)
        g = groups.setdefault(key, {"baseline": {}, "candidate": {}})
        for name, v in figures.items():
            g[side].setdefault(name, []).append(v)
    out, unmatched = [], 0
    for key, g in groups.items():
        if not g["baseline"] or not g["candidate"]:
            unmatched += 1
            continue
        for name in sorted(set(g["baseline"]) & set(g["candidate"])):
            if not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            b, c = g["baseline"][name], g["candidate"][name]
            mb, mc = statistics.median(b), statistics.median(c)
            out.append({"group": dict(key), "figure": name,
                        "baseline": {"median": mb, "rows": len(b)},
                        "candidate": {"median": mc, "rows": len(c)},
                        "ratio": mc / mb if mb != 0 else None})
    if unmatched:
        print(f"{unmatched} group(s) have rows of only one of the two commits; not compared", file=sys.stderr)
    return out


def markdown(results, baseline, candidate):
    # Columns for model and machine, then only the settings that differ between the groups shown.
    groups = [r["group"] for r in results]
    names = sorted({k for g in groups for k in g} - {"model", "machine"})
    varying = [k for k in names if len({json.dumps(g.get(k)) for g in groups}) > 1]
    shared = [(k, groups[0].get(k)) for k in names if k not in varying and k in groups[0]]

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [f"baseline {baseline}, candidate {candidate}; ratio = candidate / baseline (median of the rows)", ""]
    if shared:
        lines += ["same in every row: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in shared), ""]
    head = ["model", "machine"] + (["settings"] if varying else []) + ["figure", "baseline", "candidate", "ratio"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        g = r["group"]
        settings = [" ".join(f"{k}={json.dumps(g[k])}" for k in varying if k in g)] if varying else []
        b, c = r["baseline"], r["candidate"]
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        cells = [str(g.get("model", "")), str(g.get("machine", ""))] + settings + [
            r["figure"], f"{fmt(b['median'])} (n={b['rows']})", f"{fmt(c['median'])} (n={c['rows']})", ratio]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="commit (hash prefix or git name) to compare against")
    ap.add_argument("--candidate", required=True, help="commit (hash prefix or git name) to compare")
    ap.add_argument("--figure", action="append", metavar="PATTERN",
                    help="figures to compare, shell pattern, repeatable (default '*tokens_per_s*'; '*' = all)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    ap.add_argument("files", nargs="*", help=f"JSONL files of `gale bench --record` (default {DEFAULT_FILE})")
    a = ap.parse_args()
    try:
        rows = read_rows(a.files or [DEFAULT_FILE])
    except OSError as e:
        sys.exit(f"cannot read {e.filename}: {e.strerror}")
    results = compare(rows, a.baseline, a.candidate, a.figure or ["*tokens_per_s*"])
    if a.json:
        print(json.dumps(results, indent=2))
    elif results:
        print(markdown(results, a.baseline, a.candidate))
    if not results:
        print("no group has rows of both commits", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Issue 23: every pruning method at a few sparsities on the bundled model, each with `gale prune
# --eval` (size, perplexity, KL, top-1 against the original, decode speed of both alternating),
# as a Markdown table on stdout; the JSON reports stay under $OUT.
# Calibration: models/data/validation-head.txt (the first 24 KB of the validation text); the
# evaluation text: the last EVAL_BYTES (default 60,000) bytes of models/data/validation.txt, which
# the calibration never saw.
# Usage: tools/bench/prune_sweep.sh [GALE_BINARY] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
GALE=${1:-build/gale}
OUT=${2:-/tmp/gale-prune-sweep}
mkdir -p "$OUT"
EVAL="$OUT/eval-tail.txt"
tail -c "${EVAL_BYTES:-60000}" models/data/validation.txt > "$EVAL"
CALIB=models/data/validation-head.txt
REPS=${REPS:-7}
run() {  # name, then gale prune flags
  local name=$1; shift
  "$GALE" prune -m models/default --out "$OUT/$name" --force --eval "$EVAL" --reps "$REPS" --json "$@" \
    > "$OUT/$name.json" 2>/dev/null
  python3 - "$OUT/$name.json" "$name" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {j['change']} | {j['weight_bytes']/2**20:.2f} | {j['params']:,} | {j['zeros']:,} | "
      f"{j['perplexity']:.4f} | {100*j['perplexity_change']:+.2f} % | {j['kl_divergence']:.4f} | "
      f"{100*j['top1_agreement']:.2f} % | {j['decode_tokens_per_s']:.0f} / {j['reference_decode_tokens_per_s']:.0f} | "
      f"{j['decode_speedup']:.3f}x |")
PY
}
echo "| run | change | weights MiB | parameters | zeros | perplexity | vs original | KL mean | top-1 | decode tok/s (pruned / original) | speed-up |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for s in 0.25 0.5; do
  run "magnitude-$s" --method magnitude --sparsity "$s"
  run "wanda-$s" --method wanda --sparsity "$s" --calib "$CALIB"
done
run "2:4-magnitude" --method 2:4
run "2:4-wanda" --method 2:4 --score wanda --calib "$CALIB"
for s in 0.25 0.5; do
  run "ffn-channels-$s" --method ffn-channels --sparsity "$s" --calib "$CALIB"
  run "ffn-channels-$s-norefit" --method ffn-channels --sparsity "$s" --calib "$CALIB" --no-refit
done
run "heads-0.5" --method heads --sparsity 0.5 --calib "$CALIB"
run "layers-0.25" --method layers --sparsity 0.25 --calib "$CALIB"
run "layers-0.125" --method layers --sparsity 0.125 --calib "$CALIB"

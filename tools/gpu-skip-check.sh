#!/usr/bin/env bash
# Reads a `ctest -L gpu` log and prints one status line: FAIL when no GPU test ran (every one
# skipped, or none found), else how many ran and how many skipped. Exits 1 on FAIL.
#   tools/gpu-skip-check.sh CTEST_LOG
set -uo pipefail
log=$1
# "100% tests passed, 0 tests failed out of N" (CMake 3.25) or "100% tests passed out of N" (newer).
total=$(grep -oE 'tests passed(, [0-9]+ tests failed)? out of [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
skipped=$(grep -cE '^[[:space:]]*[0-9]+ - .*\(Skipped\)$' "$log")
total=${total:-0}
if (( total == 0 )); then
  echo "gpu tests run: FAIL (no GPU test found in $log)"; exit 1
elif (( skipped >= total )); then
  echo "gpu tests run: FAIL (all $total skipped: no CUDA device visible?)"; exit 1
fi
echo "gpu tests run: $((total - skipped)) of $total ($skipped skipped)"

#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a while.
#   tools/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
build=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGALE_FUZZ=ON -DGALE_TESTS=OFF >/dev/null
ninja -C "$build" $(cd tests/fuzz && ls fuzz_*.cpp | sed 's/\.cpp$//')
for src in tests/fuzz/fuzz_*.cpp; do
  name=$(basename "$src" .cpp)
  corpus_src=tests/fuzz/corpus/${name#fuzz_}
  work=$(mktemp -d)
  [ -d "$corpus_src" ] && cp -r "$corpus_src"/. "$work"/
  # The parsers with nesting limits get inputs long enough to pass them (their corpora hold
  # seeds of 100k brackets, 3k nested Sequences, 50k-link Jinja chains: the sizes that crashed).
  case "$name" in
    fuzz_config|fuzz_tokenizer_json|fuzz_jinja) max_len=262144 ;;
    *) max_len=65536 ;;
  esac
  echo "== $name: ${secs}s (max_len $max_len)"
  "$build/tests/fuzz/$name" -max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=0 "$work" 2>&1 | tail -n 3
  rm -rf "$work"
done
echo "fuzz: all targets ran without a crash"

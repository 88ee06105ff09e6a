#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. release build + ctest (every unit, fixture and CLI test), then `gale serve` with real
#      clients (tests/e2e/run_e2e.sh: curl, the openai npm package, a load test on loopback),
#   2. the CPU tests and the server end-to-end tests again under AddressSanitizer + UBSan (not
#      label python: the pytest suite of the Python module, whose instrumented extension would
#      need the ASan runtime preloaded into an uninstrumented interpreter; the C API test runs),
#   3. each libFuzzer target briefly.
# GALE_FUZZ_SECONDS (default 20) sets the fuzzing time per target.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
jobs=$(nproc)
passed=0
failed=0
# Runs ctest in build folder $1 with the remaining arguments and adds its counts to the totals.
run_ctest() {
  local dir=$1; shift
  local log; log=$(mktemp)
  local rc=0
  (cd "$dir" && ctest --output-on-failure -j"$jobs" "$@") 2>&1 | tee "$log" || rc=$?
  local line; line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -n 1)
  rm -f "$log"
  if [[ $line =~ ([0-9]+)\ tests\ failed\ out\ of\ ([0-9]+) ]]; then
    failed=$((failed + BASH_REMATCH[1]))
    passed=$((passed + BASH_REMATCH[2] - BASH_REMATCH[1]))
  fi
  return $rc
}

echo "== release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build -j"$jobs"
run_ctest build --timeout 900 -LE gpu  # gpu: tools/gpu-check.sh

echo "== server end-to-end tests (curl, openai npm client, load test on loopback)"
tests/e2e/run_e2e.sh build

echo "== AddressSanitizer + UBSan build and tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGALE_SANITIZE=ON >/dev/null
ninja -C build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_ctest build-asan --timeout 1800 -LE "slow|gpu|python"

echo "== server end-to-end tests under AddressSanitizer + UBSan"
# The whole e2e set (about 40 s here, against 11 s in release); a sanitizer report aborts the
# server and fails it, and LeakSanitizer runs when the server exits after the SIGTERM drain.
GALE_E2E_SANITIZED=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  tests/e2e/run_e2e.sh build-asan

echo "== fuzzing"
tools/fuzz.sh "${GALE_FUZZ_SECONDS:-20}"

echo "gale: $passed passed, $failed failed"

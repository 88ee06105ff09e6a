#!/usr/bin/env bash
# GPU check in one device call: configure + build the CUDA kernels and their tests with nvcc,
# run `ctest -L gpu`, compute-sanitizer memcheck over the GPU test binaries, and the kernel
# micro-benchmark (decode/prefill attention, cuBLASLt GEMM) next to its floors; a short table last.
#
# The device machine has cmake, ninja and nvcc but no apt, no PCRE2/utf8proc headers and no
# GoogleTest package, so this builds with -DGALE_KERNELS_ONLY=ON (core + kernels + GPU tests,
# no tokenizer/CLI) and compiles GoogleTest from sources carried along:
#   here (once):        tools/gpu-check.sh --prepare     # copies /usr/src/googletest to .devcarry/
#   device machine:     tools/gpu-check.sh               # run with carry [".devcarry"]
# Logs go to $OUT (the device tool's output folder) or build-gpu/out.
# GALE_GPU_CHECK_SKIP may list steps to skip: memcheck, bench.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  src=/usr/src/googletest
  [[ -d $src ]] || { echo "no $src: apt-get install googletest" >&2; exit 1; }
  rm -rf .devcarry/googletest && mkdir -p .devcarry && cp -r "$src" .devcarry/googletest
  echo "GoogleTest sources in .devcarry/googletest ($(du -sh .devcarry | cut -f1)); carry .devcarry"
  exit 0
fi

out=${OUT:-build-gpu/out}
mkdir -p "$out"
skip=${GALE_GPU_CHECK_SKIP:-}
status=()
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader | tee "$out/gpu.txt"

gtest=()
[[ -d .devcarry/googletest ]] && gtest=(-DGALE_GTEST_SOURCE_DIR="$PWD/.devcarry/googletest")
# Hopper machine code only here (halves the build); CI builds the portable sm_80 target too.
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGALE_KERNELS_ONLY=ON -DGALE_CUDA=ON \
  -DGALE_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" "${gtest[@]}" >"$out/configure.log" 2>&1 ||
  { tail -30 "$out/configure.log"; exit 1; }
targets=$(cd tests/gpu && ls *_test.cpp | sed 's/^/gpu_/; s/\.cpp$//')
if ! ninja -C build-gpu -j"$(nproc)" $targets cuda_kernels_bench >"$out/build.log" 2>&1; then
  grep -E -A5 "error" "$out/build.log" | head -60
  exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"

# 1. GPU tests.
if (cd build-gpu && ctest -L gpu --output-on-failure --timeout 300) >"$out/ctest.log" 2>&1; then
  status+=("ctest -L gpu: PASS ($(grep -o '[0-9]* tests passed\|[0-9]*% tests passed.*' "$out/ctest.log" | head -1))")
else
  status+=("ctest -L gpu: FAIL")
fi
grep -E "tests passed|Failed|\*\*\*|Expected|Which is|rel_err|seed|Value of|Skipped" "$out/ctest.log" | head -60

# 2. compute-sanitizer memcheck over every GPU test binary.
if [[ $skip != *memcheck* ]]; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for t in $targets; do
    if timeout 240 "$cs" --tool memcheck --error-exitcode 99 --leak-check full "build-gpu/tests/gpu/$t" \
        >"$out/memcheck-$t.log" 2>&1; then
      status+=("memcheck $t: clean")
    else
      status+=("memcheck $t: FAIL (rc $?)")
      grep -E "=========|FAILED" "$out/memcheck-$t.log" | head -20
    fi
  done
fi

# 3. Micro-benchmarks against the floors (the ceilings are measured first).
if [[ $skip != *bench* ]]; then
  build-gpu/bench/cuda/cuda_kernels_bench >"$out/bench.txt" 2>&1 || status+=("bench: FAIL")
  sed -n '/^device:/,/^floors use/p' "$out/bench.txt"
fi

echo
echo "== gpu-check summary ($(date -u +%Y-%m-%d), $(head -1 "$out/gpu.txt" | cut -d, -f1))"
printf '%s\n' "${status[@]}"
[[ $skip != *bench* ]] && sed -n '/^| kernel/,$p' "$out/bench.txt"
[[ "${status[*]}" != *FAIL* ]]

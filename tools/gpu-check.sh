#!/usr/bin/env bash
# GPU check in one device call: configure + build gale (CUDA backend) and the GPU tests with
# nvcc, run `ctest -L gpu` (kernels against their CPU references; the whole model on the GPU
# against the CPU f32 forward on every fixture; the engine's batching / prefix cache /
# preemption on the GPU), compute-sanitizer memcheck over the GPU test binaries, and the kernel
# micro-benchmark next to its floors; a short table last. tools/gpu-bench.sh does the
# end-to-end `gale bench` figures.
#
# The device machine has cmake, ninja, nvcc, Boost, CLI11 and nlohmann-json but no apt, no
# PCRE2/utf8proc headers and no GoogleTest package: those are carried along in .devcarry/
#   here (once):        tools/gpu-check.sh --prepare     # googletest sources + the .deb files
#   device machine:     tools/gpu-check.sh               # run with carry [".devcarry"]
# Logs go to $OUT (the device tool's output folder) or build-gpu/out.
# GALE_GPU_CHECK_SKIP may list steps to skip: memcheck, bench.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
  src=/usr/src/googletest
  [[ -d $src ]] || { echo "no $src: apt-get install googletest" >&2; exit 1; }
  rm -rf .devcarry/googletest .devcarry/debs && mkdir -p .devcarry/debs && cp -r "$src" .devcarry/googletest
  (cd .devcarry/debs && apt-get download libpcre2-dev libpcre2-8-0 libutf8proc-dev libutf8proc2 >/dev/null) ||
    { echo "apt-get download failed" >&2; exit 1; }
  echo "GoogleTest sources and $(ls .devcarry/debs | wc -l) .deb files in .devcarry ($(du -sh .devcarry | cut -f1)); carry .devcarry"
  exit 0
fi

out=${OUT:-build-gpu/out}
mkdir -p "$out"
skip=${GALE_GPU_CHECK_SKIP:-}
status=()
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader | tee "$out/gpu.txt"

tools/gpu-build.sh "$out" || exit 1
targets=$(cd tests/gpu && ls *_test.cpp | sed 's/^/gpu_/; s/\.cpp$//')
t0=$(date +%s)
if ! ninja -C build-gpu -j"$(nproc)" gale $targets cuda_kernels_bench >"$out/build.log" 2>&1; then
  grep -E -A5 "error" "$out/build.log" | head -60
  exit 1
fi
echo "build: $(( $(date +%s) - t0 )) s"

# 1. GPU tests. A test without a device GTEST_SKIPs, which ctest counts as passed: a run in
# which every test skipped (no device visible, a broken driver) proves nothing and fails.
if (cd build-gpu && ctest -L gpu --output-on-failure --timeout 300) >"$out/ctest.log" 2>&1; then
  status+=("ctest -L gpu: PASS ($(grep -o '[0-9]* tests passed\|[0-9]*% tests passed.*' "$out/ctest.log" | head -1))")
else
  status+=("ctest -L gpu: FAIL")
fi
status+=("$(tools/gpu-skip-check.sh "$out/ctest.log")") || true
grep -E "tests passed|Failed|\*\*\*|Expected|Which is|rel_err|seed|Value of|Skipped" "$out/ctest.log" | head -60

# 2. compute-sanitizer memcheck over every GPU test binary.
if [[ $skip != *memcheck* ]]; then
  cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for t in $targets; do
    filter=()  # the whole-model test under memcheck: one fixture per architecture and the engine
    [[ $t == gpu_model_test ]] && filter=(--gtest_filter='*llama_bf16*:*mixtral_f16*:*qwen2_f32*:*qwen3_bf16*:*mistral_bf16*:GpuEngine.*')
    if timeout 300 "$cs" --tool memcheck --error-exitcode 99 --leak-check full "build-gpu/tests/gpu/$t" "${filter[@]}" \
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

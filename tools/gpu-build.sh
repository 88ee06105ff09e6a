#!/usr/bin/env bash
# Configures build-gpu/ on the GPU machine: the full gale (CUDA backend on, Hopper machine code
# only, which halves the build; CI builds the portable sm_80 target too), with PCRE2/utf8proc
# unpacked from the carried .deb files and GoogleTest from carried sources (gpu-check.sh --prepare).
#   [GALE_COMMIT=<hash>] tools/gpu-build.sh [LOG_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-gpu/out}
mkdir -p "$out"
extra=()
if [[ -d .devcarry/debs ]]; then
  mkdir -p .devcarry/sysroot
  for f in .devcarry/debs/*.deb; do dpkg -x "$f" .devcarry/sysroot; done
  extra+=(-DCMAKE_PREFIX_PATH="$PWD/.devcarry/sysroot/usr")
fi
[[ -d .devcarry/googletest ]] && extra+=(-DGALE_GTEST_SOURCE_DIR="$PWD/.devcarry/googletest")
# The commit `gale bench --record` stamps on its rows: this copy of the tree may have no .git.
[[ -n "${GALE_COMMIT:-}" ]] && extra+=(-DGALE_COMMIT="$GALE_COMMIT")
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGALE_CUDA=ON \
  -DGALE_CUDA_GENCODE="-gencode=arch=compute_90a,code=sm_90a" "${extra[@]}" >"$out/configure.log" 2>&1 ||
  { tail -30 "$out/configure.log"; exit 1; }

#!/usr/bin/env bash
# The host KV tier (--host-kv-cache) on one GPU: a 4,096-token prefix pushed out of a device KV
# pool sized for one request, then asked for again; its prefill with the tier (the prefix copied
# back from pinned host memory) against without (recomputed), `gale bench --mode host-tier`.
#   tools/bench/host_kv_tier.sh [MODEL] [ROUNDS]   (after tools/gpu-build.sh or tools/gpu-check.sh: build-gpu/)
# MODEL: default synthetic:llama3-8b (bf16); ROUNDS: default 8. JSON to $OUT (default build-gpu/out).
# Sizes: llama3-8b's KV is 128 KiB a token in bf16 (32 layers x K,V x 8 heads x 128 x 2 bytes), so
# the 4k prefix is 512 MiB and the flush request as much: a 2 GiB pinned tier holds both. The
# "prefill s" column is the timed request's step: loads (cudaMemcpyAsync on the stream) + the
# forward over its own 16 tokens with the tier, the whole 4,112-token prefill without.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-build-gpu/out}
mkdir -p "$out"
ninja -C build-gpu gale >"$out/build-host-tier.log" 2>&1 || { tail -20 "$out/build-host-tier.log"; exit 1; }
build-gpu/gale bench -m "${1:-synthetic:llama3-8b}" --device cuda --mode host-tier --prefix 4096 --suffix 16 \
  --requests "${2:-8}" --host-kv-cache 2GiB --json | tee "$out/host-tier.json"

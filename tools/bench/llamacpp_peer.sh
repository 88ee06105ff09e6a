#!/usr/bin/env bash
# llama.cpp beside `gale bench` on the same machine, the same model shape and the same tests
# (pp512, tg128), in alternating rounds (llama.cpp, gale, llama.cpp, gale, ...), so that each
# ratio compares figures measured minutes apart. Not part of CI.
#
# llama.cpp comes from the npm package node-llama-cpp, which ships its pinned llama.cpp source
# as a git bundle (llama/gitRelease.bundle): no GitHub access needed. It is built with its CPU
# backend (-DGGML_NATIVE=ON), or with --cuda its CUDA backend (needs nvcc). The model is a
# random-weight GGUF of synthetic:llama3-1b's (or -8b's) shape written by peer_gguf.py with
# llama.cpp's bundled gguf-py, in BF16, then Q8_0 and Q4_0 by llama-quantize.
#
# Pairs compared (gale's side runs only where this gale has the option):
#   BF16 GGUF  vs gale default (f32 activations, exact) and gale --dtype bf16 (CPU)
#   Q8_0       vs gale --quantization int8
#   Q4_0       vs gale --quantization int4
#
# Requirements: npm, git, cmake, a C++ compiler, python3 with numpy (Debian:
# apt-get install python3-numpy), and a built gale (default ./build/gale).
# Downloads, the llama.cpp tree, its builds and the GGUF files go under $GALE_PEER_DIR
# (default /work/.peer), never into the repository.
#
# Usage: tools/bench/llamacpp_peer.sh [--cuda] [--no-amx] [--model llama3-1b|llama3-8b] [--threads N]
#          [--rounds R] [--reps N] [--formats bf16,q8_0,q4_0] [--gale PATH] [--jobs N]
# --no-amx: build the CPU backend for AVX-512 (F, BW, VL, VBMI, VNNI, BF16) without -march=native's
# AMX. On the 2-vCPU Sapphire Rapids guest of 2026-12-07, node-llama-cpp 3.22.1's llama.cpp died
# with SIGILL (tilezero in tinygemm_kernel_amx<block_q8_0>) on Q8_0/Q4_0 prompts when built
# native; ggml's AMX kernels serve only quantized types, so BF16 figures are the same either way.
# With GALE_CPU_LOCK=/path/to/lock every build step and every timed run holds that flock
# (one command at a time), as a shared machine requires.
set -euo pipefail

MODEL=llama3-1b
THREADS=$(nproc)
ROUNDS=2
REPS=2
FORMATS=bf16,q8_0,q4_0
GALE=./build/gale
JOBS=$(nproc)
CUDA=0
NOAMX=0
PEER=${GALE_PEER_DIR:-/work/.peer}
NLC_VERSION=${NLC_VERSION:-latest}
PY=${PYTHON:-python3}

while [[ $# -gt 0 ]]; do
  case $1 in
    --cuda) CUDA=1 ;;
    --no-amx) NOAMX=1 ;;
    --model) MODEL=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --formats) FORMATS=$2; shift ;;
    --gale) GALE=$2; shift ;;
    --jobs) JOBS=$2; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
case $MODEL in llama3-1b|llama3-8b) ;; *) echo "--model must be llama3-1b or llama3-8b" >&2; exit 2 ;; esac
[[ -x $GALE ]] || { echo "no gale binary at $GALE (build it, or pass --gale)" >&2; exit 2; }
GALE=$(realpath "$GALE")

locked() {
  if [[ -n ${GALE_CPU_LOCK:-} ]]; then flock "$GALE_CPU_LOCK" "$@"; else "$@"; fi
}

mkdir -p "$PEER"

# ---- llama.cpp source: node-llama-cpp's bundle -------------------------------------------
NLC=$PEER/node-llama-cpp
if [[ ! -f $NLC/package/llama/gitRelease.bundle ]]; then
  echo "== fetching node-llama-cpp@$NLC_VERSION (npm pack)"
  rm -rf "$NLC" && mkdir -p "$NLC"
  (cd "$NLC" && npm pack --silent "node-llama-cpp@$NLC_VERSION" >/dev/null && tar xzf node-llama-cpp-*.tgz)
fi
NLC_VER=$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$NLC/package/package.json" | head -1)
SRC=$PEER/llama.cpp
if [[ ! -d $SRC/.git ]]; then
  echo "== unpacking llama.cpp from the bundle"
  git clone -q "$NLC/package/llama/gitRelease.bundle" "$SRC"
fi
LLAMA_COMMIT=$(git -C "$SRC" rev-parse --short=10 HEAD)

# ---- build ---------------------------------------------------------------------------------
if [[ $CUDA == 1 ]]; then BUILD=$SRC/build-cuda; BACKEND="-DGGML_CUDA=ON -DGGML_NATIVE=ON"
elif [[ $NOAMX == 1 ]]; then
  BUILD=$SRC/build-cpu-noamx
  BACKEND="-DGGML_CUDA=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
           -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"
else BUILD=$SRC/build-cpu; BACKEND="-DGGML_CUDA=OFF -DGGML_NATIVE=ON"; fi
if [[ ! -x $BUILD/bin/llama-bench || ! -x $BUILD/bin/llama-quantize ]]; then
  echo "== building llama.cpp $LLAMA_COMMIT in $BUILD (-j$JOBS)"
  echo "   (compiler output in $BUILD.log)"
  # shellcheck disable=SC2086
  locked cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release $BACKEND \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >"$BUILD.log" 2>&1
  # In pieces, so that no single lock hold is long on a 2-core machine.
  locked cmake --build "$BUILD" --target ggml-base -j "$JOBS" >>"$BUILD.log" 2>&1
  locked cmake --build "$BUILD" --target ggml -j "$JOBS" >>"$BUILD.log" 2>&1
  locked cmake --build "$BUILD" --target llama -j "$JOBS" >>"$BUILD.log" 2>&1
  locked cmake --build "$BUILD" --target llama-bench llama-quantize -j "$JOBS" >>"$BUILD.log" 2>&1
fi
BENCH=$BUILD/bin/llama-bench
QUANT=$BUILD/bin/llama-quantize

# ---- GGUF files ------------------------------------------------------------------------------
if ! "$PY" -c 'import numpy' 2>/dev/null; then
  for p in /usr/bin/python3; do "$p" -c 'import numpy' 2>/dev/null && PY=$p && break; done
fi
"$PY" -c 'import numpy' 2>/dev/null || { echo "numpy missing: apt-get install python3-numpy (or PYTHON=...)" >&2; exit 2; }
GG=$PEER/gguf
mkdir -p "$GG"
BF16=$GG/$MODEL-bf16.gguf
if [[ ! -f $BF16 ]]; then
  echo "== writing $BF16"
  locked env PYTHONPATH="$SRC/gguf-py" "$PY" "$(dirname "$0")/peer_gguf.py" "$MODEL" "$BF16.tmp"
  mv "$BF16.tmp" "$BF16"
fi
gguf_for() {  # format -> file, quantizing on first use
  local f=$1 out
  [[ $f == bf16 ]] && { echo "$BF16"; return; }
  out=$GG/$MODEL-$f.gguf
  if [[ ! -f $out ]]; then
    locked "$QUANT" "$BF16" "$out.tmp" "${f^^}" "$THREADS" >/dev/null 2>&1 && mv "$out.tmp" "$out"
  fi
  echo "$out"
}

# ---- the runs ---------------------------------------------------------------------------------
GALE_HELP=$("$GALE" bench --help 2>&1 || true)
gale_has() { grep -q -- "$1" <<<"$GALE_HELP"; }
# gale configurations facing each llama.cpp format: "label|environment|gale args" (environment:
# VAR=value words for `env`, or -). The -a8 rows are gale's counterpart of llama.cpp's own
# numerics: x quantized to 8 bits for integer dot products (as ggml's Q8_0 / Q4_0 dot products do)
# and the LM head quantized too (llama-quantize stores output.weight as Q8_0 / Q6_K).
gale_configs() {
  local dev=""; [[ $CUDA == 1 ]] && dev="--device cuda"
  case $1 in
    bf16)
      if [[ $CUDA == 1 ]]; then echo "bf16|-|$dev"; else echo "f32|-|--dtype f32"; echo "bf16|-|--dtype bf16"; fi ;;
    q8_0|q4_0)
      local q=int8; [[ $1 == q4_0 ]] && q=int4
      if ! gale_has $q; then echo "$q|-|SKIP"; return; fi
      echo "$q|-|$dev --quantization $q"
      [[ $CUDA == 1 ]] || echo "$q-a8|GALE_CPU_INT_A8=1|--quantization $q --quantize-lm-head" ;;
  esac
}
NGL=""; [[ $CUDA == 1 ]] && NGL="-ngl 99"
RAW=$PEER/results-$(date -u +%Y%m%dT%H%M%S).jsonl
# The commit of the source tree this script is in (the binary may be another's: pass GALE_COMMIT).
GALE_COMMIT=${GALE_COMMIT:-$(git -C "$(dirname "$0")" rev-parse --short=10 HEAD 2>/dev/null || echo unknown)}

run_llama() {  # format file -> "pp tg", or nothing when llama-bench fails
  locked "$BENCH" -m "$2" -p 512 -n 128 -t "$THREADS" -r "$REPS" $NGL -o json 2>/dev/null |
    "$PY" -c 'import json,sys
try: r=json.load(sys.stdin)
except ValueError: sys.exit(0)
pp=[x["avg_ts"] for x in r if x["n_prompt"]>0]; tg=[x["avg_ts"] for x in r if x["n_gen"]>0]
print(pp[0], tg[0])' || true
}
run_gale() {  # args environment -> "pp tg"
  local envs=(); [[ ${2:--} != - ]] && read -ra envs <<<"$2"
  # shellcheck disable=SC2086
  locked env "${envs[@]}" "$GALE" bench -m "synthetic:$MODEL" $1 --prompt 512 --gen 128 --threads "$THREADS" --reps "$REPS" \
    --no-probe --pairs 0 --json 2>/dev/null |
    "$PY" -c 'import json,sys; r=json.load(sys.stdin); print(r["prompt_tokens_per_s"], r["decode_tokens_per_s"])'
}

echo "== $MODEL, $THREADS threads, $ROUNDS rounds, llama.cpp $LLAMA_COMMIT (node-llama-cpp $NLC_VER), gale $GALE_COMMIT"
IFS=, read -ra FMTS <<<"$FORMATS"
for ((round = 1; round <= ROUNDS; ++round)); do
  for f in "${FMTS[@]}"; do
    file=$(gguf_for "$f")
    lpp="" ltg=""
    read -r lpp ltg < <(run_llama "$f" "$file") || true
    if [[ -z $lpp ]]; then echo "round $round  llama.cpp $f: llama-bench failed; skipped"; continue; fi
    echo "{\"round\":$round,\"engine\":\"llama.cpp\",\"format\":\"$f\",\"pp512\":$lpp,\"tg128\":$ltg}" >>"$RAW"
    echo "round $round  llama.cpp $f: pp512 $lpp  tg128 $ltg"
    while IFS='|' read -r label envs args; do
      [[ $args == SKIP ]] && continue
      read -r gpp gtg < <(run_gale "$args" "$envs")
      echo "{\"round\":$round,\"engine\":\"gale\",\"format\":\"$f\",\"gale\":\"$label\",\"pp512\":$gpp,\"tg128\":$gtg}" >>"$RAW"
      echo "round $round  gale $label:     pp512 $gpp  tg128 $gtg"
    done < <(gale_configs "$f")
  done
done

# ---- table: medians over rounds, and the median of each round's own ratio -----------------
"$PY" - "$RAW" "$MODEL" "$THREADS" "$(uname -n)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
  "$LLAMA_COMMIT" "$NLC_VER" "$GALE_COMMIT" <<'PYEOF'
import json, statistics, sys, datetime
raw, model, threads, host, cpu, lc, nlc, gc = sys.argv[1:9]
rows = [json.loads(l) for l in open(raw)]
print(f"\n{model}, {threads} threads, {cpu} ({host}), {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC")
print(f"llama.cpp {lc} (node-llama-cpp {nlc}), gale {gc}; raw rows: {raw}\n")
print("| llama.cpp | gale | llama pp512 | gale pp512 | ratio | llama tg128 | gale tg128 | ratio |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
fmts = list(dict.fromkeys(r["format"] for r in rows))
for f in fmts:
    ll = {r["round"]: r for r in rows if r["format"] == f and r["engine"] == "llama.cpp"}
    gales = list(dict.fromkeys(r["gale"] for r in rows if r["format"] == f and r["engine"] == "gale"))
    if not gales:  # this gale has no counterpart (yet): llama.cpp's figures alone
        med = lambda t: f"{statistics.median([r[t] for r in ll.values()]):.2f}"
        print(f"| {f.upper()} | - | {med('pp512')} | - | - | {med('tg128')} | - | - |")
    for g in gales:
        gg = {r["round"]: r for r in rows if r["format"] == f and r.get("gale") == g}
        rs = sorted(set(ll) & set(gg))
        med = lambda xs: statistics.median(xs)
        cells = []
        for t in ("pp512", "tg128"):
            cells += [f"{med([ll[r][t] for r in rs]):.2f}", f"{med([gg[r][t] for r in rs]):.2f}",
                      f"{med([gg[r][t] / ll[r][t] for r in rs]):.2f}x"]
        print(f"| {f.upper()} | {g} | " + " | ".join(cells) + " |")
PYEOF

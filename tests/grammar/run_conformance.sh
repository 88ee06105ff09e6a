#!/usr/bin/env bash
# Schema conformance: random schemas, outputs sampled through the grammar engine's mask with random
# logits on the bundled model's tokenizer, each validated by ajv (validate.mjs).
# Usage: tests/grammar/run_conformance.sh SCHEMA_CONFORMANCE_BINARY MODEL_DIR [COUNT] [SEED]
# Exits 77 (skipped) without node or without ajv installed (tools/setup.sh: npm ci here).
set -euo pipefail
bin=${1:?usage: run_conformance.sh BINARY MODEL_DIR [COUNT] [SEED]}
model=${2:?usage: run_conformance.sh BINARY MODEL_DIR [COUNT] [SEED]}
count=${3:-400}
seed=${4:-1}
here=$(cd "$(dirname "$0")" && pwd)
command -v node >/dev/null 2>&1 || { echo "node not found: skipped"; exit 77; }
[ -d "$here/node_modules/ajv" ] || { echo "ajv not installed (cd tests/grammar && npm ci): skipped"; exit 77; }
out=$(mktemp /tmp/gale-schema-conformance.XXXXXX.jsonl)
trap 'rm -f "$out"' EXIT
"$bin" "$model" "$count" "$seed" "$out"
node "$here/validate.mjs" "$out"

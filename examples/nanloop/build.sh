#!/bin/sh
# Builds nanloop.wasm from nanloop.c. Deterministic: same inputs, same bytes.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The output's base name goes into the module's name section: build under the
# final name in a scratch directory, then move it here.
../wasi-cc.sh -O2 -Wall -Wextra -o "$tmp/nanloop.wasm" nanloop.c
mv "$tmp/nanloop.wasm" nanloop.wasm
sha256sum nanloop.wasm

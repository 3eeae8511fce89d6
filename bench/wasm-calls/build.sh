#!/bin/sh
# Builds calls.wasm (the host-call benchmark's guest) with the examples' toolchain wrapper.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
../../examples/wasi-cc.sh -O2 -Wall -Wextra -o "$tmp/calls.wasm" calls.c
mv "$tmp/calls.wasm" calls.wasm
sha256sum calls.wasm

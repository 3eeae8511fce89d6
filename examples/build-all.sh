#!/bin/sh
# Rebuilds every example's .wasm next to its source. Each build is
# deterministic: run it twice and the sha256 sums printed are the same.
# Needs the toolchain in README.md; the sqlite build also needs npm's registry.
set -eu
cd "$(dirname "$0")"
for b in kvserver clockrand nanloop sqlite; do
  echo "== $b"
  "./$b/build.sh"
done

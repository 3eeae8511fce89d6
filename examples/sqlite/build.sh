#!/bin/sh
# Builds sqlite3.wasm: the SQLite 3.52.0 shell (shell.c + sqlite3.c, both
# unmodified) for wasm32-wasi. The sources come from the npm package
# sqlite3@6.0.1, which ships deps/sqlite-autoconf-3520000.tar.gz; npm must
# reach its registry (or set SQLITE_AUTOCONF_TARBALL to a local copy of that
# tarball). Neither tarball is kept. Deterministic: same inputs, same bytes.
set -eu
cd "$(dirname "$0")"
here=$(pwd)
NPM_SPEC=sqlite3@6.0.1
TARBALL=sqlite-autoconf-3520000.tar.gz
TARBALL_SHA256=f6b50b0c103392af32a8be15b2b9d25959de9a00a70c3979128aafeaa5338b3f

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ -n "${SQLITE_AUTOCONF_TARBALL:-}" ]; then
  cp "$SQLITE_AUTOCONF_TARBALL" "$tmp/$TARBALL"
else
  (cd "$tmp" && npm pack --silent "$NPM_SPEC" >/dev/null)
  tar -xzf "$tmp"/sqlite3-*.tgz -C "$tmp" "package/deps/$TARBALL"
  mv "$tmp/package/deps/$TARBALL" "$tmp/$TARBALL"
fi
echo "$TARBALL_SHA256  $tmp/$TARBALL" | sha256sum -c --quiet - || {
  echo "build.sh: $TARBALL is not the expected one (sha256 $TARBALL_SHA256)" >&2
  exit 1
}
tar -xzf "$tmp/$TARBALL" -C "$tmp"
src="$tmp/sqlite-autoconf-3520000"
cp wasi-compat.c wasi-compat.h "$src/"
mkdir "$tmp/out"

# SQLITE_THREADSAFE=0, SQLITE_OMIT_LOAD_EXTENSION: what sqlite3.h sets by
#   itself for __wasi__ (no threads, no dlopen); given here to be explicit.
# SQLITE_OMIT_WAL: WAL needs shared memory (mmap of a -shm file) that WASI
#   lacks, and its code calls getpagesize(), which wasi-libc does not have.
# SQLITE_ENABLE_MATH_FUNCTIONS: the math SQL functions, on by default in
#   SQLite's own configure.
# _WASI_EMULATED_SIGNAL (shell.c: signal(SIGINT)), _WASI_EMULATED_PROCESS_CLOCKS
#   (shell.c: getrusage for .timer), _WASI_EMULATED_GETPID (shell.c: getpid):
#   wasi-libc's emulations, each with its library.
# -include wasi-compat.h + wasi-compat.c: chmod, realpath and system, which
#   shell.c calls and this wasi-libc lacks.
# The sources are compiled from their directory under relative names, and
# -ffile-prefix-map maps the scratch directory away, so no temporary path
# can reach the output.
(cd "$src" && "$here/../wasi-cc.sh" -O2 -ffile-prefix-map="$tmp"=. \
  -include wasi-compat.h \
  -DSQLITE_THREADSAFE=0 -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_OMIT_WAL \
  -DSQLITE_ENABLE_MATH_FUNCTIONS \
  -D_WASI_EMULATED_SIGNAL -D_WASI_EMULATED_PROCESS_CLOCKS -D_WASI_EMULATED_GETPID \
  -o "$tmp/out/sqlite3.wasm" shell.c sqlite3.c wasi-compat.c \
  -lwasi-emulated-signal -lwasi-emulated-process-clocks -lwasi-emulated-getpid)
mv "$tmp/out/sqlite3.wasm" sqlite3.wasm
sha256sum sqlite3.wasm

#!/bin/sh
# clang for wasm32-wasi (WASI preview1) with the flags every example shares.
# Used by each example's build.sh: ../wasi-cc.sh [clang args...]
#
# - Debian's clang-19, wasm-ld and wasi-libc (see README.md for the packages).
# - clang runs `wasm-opt` after linking whenever it finds one on PATH (and
#   /bin is /usr/bin here, where binaryen installs it). So clang runs with an
#   emptied environment and PATH=/usr/lib/llvm-19/bin only, which holds no
#   wasm-opt: the output does not depend on whether binaryen is installed.
#   Debian's clang looks for the linker as `wasm-ld-19`, which is not in that
#   directory, so the linker is named explicitly with -fuse-ld.
# - --stack-first puts the 256 KiB stack below the data: an overflow traps
#   instead of corrupting data, and lockstep's asyncify has free stack below
#   the stack pointer.
# - --strip-debug drops the DWARF that Debian's libc.a carries; the "name"
#   section stays, so traps still show function names.
# - No threads, shared memory or SIMD flags.
set -eu
LLVM_BIN=/usr/lib/llvm-19/bin
SYSROOT=/usr
if [ ! -x "$LLVM_BIN/clang" ] || [ ! -x "$LLVM_BIN/wasm-ld" ] ||
   [ ! -f "$SYSROOT/lib/wasm32-wasi/libc.a" ] ||
   [ ! -f /usr/lib/llvm-19/lib/clang/19/lib/wasi/libclang_rt.builtins-wasm32.a ]; then
  echo "wasi-cc.sh: missing toolchain; install it with" >&2
  echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32" >&2
  exit 127
fi
if [ -e "$LLVM_BIN/wasm-opt" ]; then
  echo "wasi-cc.sh: $LLVM_BIN/wasm-opt exists; clang would run it after linking" >&2
  exit 1
fi
exec env -i PATH="$LLVM_BIN" LC_ALL=C "$LLVM_BIN/clang" \
  --target=wasm32-wasi --sysroot="$SYSROOT" -fuse-ld="$LLVM_BIN/wasm-ld" \
  -Wno-unused-command-line-argument \
  -Wl,--stack-first -Wl,-z,stack-size=262144 -Wl,--strip-debug \
  "$@"

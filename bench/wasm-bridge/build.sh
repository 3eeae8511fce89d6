#!/bin/sh
# Build the guest with Debian's toolchain (clang-19, lld-19, wasi-libc, libclang-rt-19-dev-wasm32)
# and make the asyncify-instrumented variants with binaryen's wasm-opt.
set -eu
cd "$(dirname "$0")"
CC=${CC:-clang-19}
$CC --target=wasm32-wasi --sysroot=/usr -O2 -mexec-model=reactor -o guest.wasm guest.c
# asyncify, then optimize (binaryen's recommended order: -O after the pass matters a lot)
wasm-opt guest.wasm --asyncify --pass-arg=asyncify-imports@env.next_input -O2 -o guest.async.wasm
# asyncify without optimization, to show what the raw instrumentation costs
wasm-opt guest.wasm --asyncify --pass-arg=asyncify-imports@env.next_input -o guest.async-noopt.wasm
# toolchain check with libc + WASI imports (command model)
$CC --target=wasm32-wasi --sysroot=/usr -O2 -o hello.wasm hello.c

#!/bin/sh
# Builds the guest and runs plain / asyncify / worker-bridge hosts REPS times each (interleaved),
# then prints a table. Usage: bench/wasm-bridge/run.sh [REPS]   (default 5)
set -eu
cd "$(dirname "$0")"
REPS=${1:-5}
./build.sh
echo "module sizes (bytes):"; wc -c guest.wasm guest.async.wasm guest.async-noopt.wasm | head -3
OUT=${OUT:-results.jsonl}; : > "$OUT"
N1=200000    # calls for in-thread hosts, 64-byte request, 1 pass of work per call
NW=30000     # calls for worker hosts (each call is a cross-thread round trip)
NB=20000     # calls with bigger work (100 passes over the request per call)
i=0
while [ $i -lt "$REPS" ]; do
  i=$((i + 1)); echo "round $i/$REPS" >&2
  {
  node turn-baseline.mjs --n=$N1
  node plain-host.mjs --n=$N1 --work=1
  node plain-host.mjs --n=$N1 --work=1 --fn=compute
  node plain-host.mjs --n=$NB --work=100
  node plain-host.mjs --n=$NB --work=100 --fn=compute
  node asyncify-host.mjs --n=$N1 --work=1 --mode=ready
  node asyncify-host.mjs --n=$N1 --work=1 --mode=ready --slice=5
  node asyncify-host.mjs --n=$N1 --work=1 --mode=wait
  node asyncify-host.mjs --n=$NB --work=100 --mode=ready
  node asyncify-host.mjs --n=$NB --work=100 --mode=wait
  node asyncify-host.mjs --n=$N1 --work=1 --mode=ready --fn=compute
  node asyncify-host.mjs --n=$N1 --work=1 --mode=ready --module=guest.async-noopt.wasm
  node asyncify-host.mjs --n=$NB --work=100 --mode=ready --module=guest.async-noopt.wasm
  node asyncify-host.mjs --n=$N1 --work=1 --mode=wait --module=guest.async-noopt.wasm
  node plain-host.mjs --n=$N1 --work=1 --fn=run_deep --depth=20
  node plain-host.mjs --n=$N1 --work=1 --fn=run_deep --depth=100
  node asyncify-host.mjs --n=$N1 --work=1 --fn=run_deep --depth=20 --mode=ready
  node asyncify-host.mjs --n=$N1 --work=1 --fn=run_deep --depth=20 --mode=wait
  node asyncify-host.mjs --n=$N1 --work=1 --fn=run_deep --depth=100 --mode=ready
  node asyncify-host.mjs --n=$N1 --work=1 --fn=run_deep --depth=100 --mode=wait
  node worker-bridge.mjs --warm=5000 --n=$NW --work=1 --mode=ready
  node worker-bridge.mjs --warm=5000 --n=$NW --work=1 --mode=wait
  node worker-bridge.mjs --warm=5000 --n=$NW --work=1 --mode=ready --notify=waitAsync
  node worker-bridge.mjs --warm=5000 --n=$NW --work=1 --mode=wait --notify=waitAsync
  node worker-bridge.mjs --warm=5000 --n=$NW --work=1 --mode=ready --notify=waitAsync --spin=20000
  node worker-bridge.mjs --warm=5000 --n=$NW --work=1 --mode=wait --notify=waitAsync --spin=20000
  node worker-bridge.mjs --warm=5000 --n=$NB --work=100 --mode=ready --notify=waitAsync
  timeout 60 node pingpong.mjs --n=$NW
  timeout 60 node pingpong.mjs --n=$N1 --spin=20000
  } >> "$OUT"
done
node summarize.mjs < "$OUT"

#!/bin/sh
# Tests kvserver.c's logic without lockstep's host: builds it natively (with
# AddressSanitizer and UBSan), launches it on a loopback port with the
# listening socket at fd 4, and runs check.mjs against it, then the
# persistence check across a restart. Needs a native C compiler and node.
#   examples/kvserver/native-test.sh
# EXTRA_CFLAGS=-DKVSERVER_TEST_NO_NONBLOCK runs it as if the host could not
# make sockets non-blocking (replies then wait for POLLOUT).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
CC=${CC:-clang-19}
tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
$CC -O2 -g -Wall -Wextra -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  ${EXTRA_CFLAGS:-} -o "$tmp/kvserver" "$here/kvserver.c"
$CC -O2 -o "$tmp/native-launch" "$here/native-launch.c"
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')

start() { # start [ARG]...: the server in $tmp (its working directory)
  (cd "$tmp" && exec ./native-launch "$port" ./kvserver "$@") >>"$tmp/stdout" 2>>"$tmp/stderr" &
  pid=$!
  i=0
  until grep -q "listening on fd 4" "$tmp/stdout" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then echo "kvserver did not start" >&2; cat "$tmp/stderr" >&2; exit 1; fi
    sleep 0.1
  done
}
stop() {
  if ! kill "$pid" 2>/dev/null; then echo "kvserver had exited:" >&2; cat "$tmp/stderr" >&2; fi
  wait "$pid" 2>/dev/null || true; pid=
  : >"$tmp/stdout"
}

status=0
start
node "$here/check.mjs" "$port" --fresh || status=1
stop
start --persist kv.log
node "$here/check.mjs" "$port" --phase=write || status=1
stop
printf 'SET p:torn half a rec' >>"$tmp/kv.log" # a torn last record, as after a crash
start --persist kv.log
grep "replayed" "$tmp/stdout"
node "$here/check.mjs" "$port" --phase=verify || status=1
stop
if [ -s "$tmp/stderr" ]; then echo "--- server stderr:"; cat "$tmp/stderr"; status=1; fi
exit $status

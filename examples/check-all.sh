#!/bin/sh
# Checks the committed .wasm files without lockstep's host and without the
# toolchain: runs clockrand, nanloop and sqlite under node:wasi, and kvserver
# under mock-host-test.mjs (both socket modes). Needs only node >= 20.
# Prints one line per check and "N passed, N failed"; exits 1 on a failure.
set -u
cd "$(dirname "$0")"
passed=0
failed=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { node --no-warnings run-wasi.mjs "$@"; }
ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }

# clockrand: 3 iterations, exit 0, the file equals stdout, the checksum line.
mkdir "$tmp/cr"
if run --dir "$tmp/cr" clockrand/clockrand.wasm 3 >"$tmp/cr.out" 2>"$tmp/cr.err" &&
  cmp -s "$tmp/cr.out" "$tmp/cr/clockrand.out" &&
  [ "$(grep -c '^iter ' "$tmp/cr.out")" = 3 ] &&
  grep -q '^time()=[0-9]* monotonic_ordered=yes slept_at_least_asked=yes$' "$tmp/cr.out" &&
  grep -q '^checksum fnv1a64=[0-9a-f]\{16\} over [0-9]* bytes$' "$tmp/cr.out"; then
  ok "clockrand: 3 iterations, clockrand.out = stdout"
else
  fail "clockrand"; cat "$tmp/cr.out" "$tmp/cr.err"
fi

# nanloop: a short run, its shape, and the same hashes twice.
if run nanloop/nanloop.wasm 20000 >"$tmp/nl1" && run nanloop/nanloop.wasm 20000 >"$tmp/nl2" &&
  cmp -s "$tmp/nl1" "$tmp/nl2" &&
  grep -q '^f64 NaN results: 360000$' "$tmp/nl1" &&
  grep -q '^total hash: [0-9a-f]\{16\}$' "$tmp/nl1" &&
  grep -q '^   0 f64 0/0  *first=[0-9a-f]*8000000000000 ' "$tmp/nl1"; then
  ok "nanloop: 20000 iterations, same hashes twice"
else
  fail "nanloop"; cat "$tmp/nl1"
fi

# sqlite: SQL on stdin, in memory and in a database file in the guest dir.
mkdir "$tmp/sq"
printf 'create table t(a); insert into t values(1),(2); select sum(a) from t;\n' >"$tmp/q1.sql"
if [ "$(run --env HOME=/ --dir "$tmp/sq" --stdin "$tmp/q1.sql" sqlite/sqlite3.wasm 2>&1)" = 3 ]; then
  ok "sqlite: in-memory database from stdin"
else
  fail "sqlite: in-memory database from stdin"
fi
cat >"$tmp/q2.sql" <<'SQL'
create table t(a integer primary key, b text);
with recursive n(i) as (select 1 union all select i+1 from n where i<1000)
  insert into t(b) select 'row' || i from n;
begin; delete from t; rollback;
select count(*), max(b), json_array(sqrt(16), 2+2) from t;
SQL
printf 'select count(*) from t; pragma integrity_check;\n' >"$tmp/q3.sql"
if [ "$(run --env HOME=/ --dir "$tmp/sq" --stdin "$tmp/q2.sql" sqlite/sqlite3.wasm test.db 2>&1)" = '1000|row999|[4.0,4]' ] &&
  [ -s "$tmp/sq/test.db" ] &&
  [ "$(run --env HOME=/ --dir "$tmp/sq" --stdin "$tmp/q3.sql" sqlite/sqlite3.wasm /test.db 2>&1 | tr '\n' ' ')" = '1000 ok ' ]; then
  ok "sqlite: a database file in the guest dir, written then reopened"
else
  fail "sqlite: a database file in the guest dir"
fi

# kvserver: the scripted socket host, non-blocking and blocking.
for mode in "" --blocking; do
  if node --no-warnings kvserver/mock-host-test.mjs $mode >"$tmp/kv.out" 2>&1; then
    ok "kvserver: mock-host-test.mjs $mode ($(tail -1 "$tmp/kv.out"))"
  else
    fail "kvserver: mock-host-test.mjs $mode"; grep -v '^ok' "$tmp/kv.out"
  fi
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

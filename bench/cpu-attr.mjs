#!/usr/bin/env node
// Where the CPU goes, per op, by lockstep function: one node against a replicated cluster
// (issue 13 item 1). Not a test.
//
// V8's --cpu-prof samples wall time: when three busy processes share two cores, a function
// that was descheduled half-way looks twice as expensive, so its per-function numbers compare
// machines as much as code. This script samples CPU time instead: `perf record -a -g -e
// cpu-clock` (a kernel timer that only fires on a CPU that is running something) while
// redis-benchmark loads the node, with every node started with `--perf-basic-prof` so the
// JIT's frames have names. Each sample is charged to its process and, within it, to the
// innermost lockstep function on its stack (the kernel time of a socket write counts for the
// lockstep function that asked for it); samples with no lockstep frame are grouped as gc,
// epoll (the event loop waiting or waking), read (libuv reading sockets before any lockstep
// code runs), node js (Node's own JavaScript) or other.
//
//   npx tsc -p . && node bench/cpu-attr.mjs [--op set] [--conc 16] [--n 400000] [--mode rsm]
//                                           [--warmup 3] [--seconds 3] [--top 25] [--dist DIR]
//
// redis-benchmark sends --n requests; perf records --seconds after --warmup seconds of them,
// so --n must last longer than both (the script says so if it did not).
//
// Needs perf (Debian linux-perf) with permission to sample every CPU (root, or
// kernel.perf_event_paranoid <= 0) and redis-benchmark (redis-tools); says so and exits if
// either is missing. Every process it starts is killed and every temp file removed on exit.

import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { loadDist, options, reaper } from './lib.mjs';

const opt = options();
const o = {
  op: opt('--op', 'set'),
  conc: Number(opt('--conc', '16')),
  n: Number(opt('--n', '400000')),
  mode: opt('--mode', 'rsm'),
  seconds: Number(opt('--seconds', '3')),
  warmup: Number(opt('--warmup', '3')),
  top: Number(opt('--top', '25')),
  dist: opt('--dist', undefined),
};
const HZ = 4999;
const log = (...a) => console.error('[cpu-attr]', ...a);
for (const [bin, argv, pkg] of [['perf', ['--version'], 'linux-perf'], ['redis-benchmark', ['--version'], 'redis-tools']]) {
  if (spawnSync(bin, argv, { stdio: 'ignore' }).status !== 0) {
    console.error(`cpu-attr: ${bin} not found (apt-get install ${pkg})`);
    process.exit(2);
  }
}
const { ProcessCluster } = await loadDist(o.dist);

const tmp = mkdtempSync(join(tmpdir(), 'lockstep-cpu-attr-'));
// ProcessCluster's `wrap` goes before the node binary: this shim puts the flag after it.
const shim = join(tmp, 'node-perf.sh');
// --perf-basic-prof also writes V8's isolate-*-v8.log into the working directory: run in tmp.
writeFileSync(shim, `#!/bin/sh\ncd '${tmp}' || exit 1\nn="$1"; shift\nexec "$n" --perf-basic-prof "$@"\n`);
chmodSync(shim, 0o755);
const perfMaps = new Set();
const { clusters, children, cleanup } = reaper(() => {
  for (const f of perfMaps) rmSync(f, { force: true }); // --perf-basic-prof's /tmp/perf-PID.map
  rmSync(tmp, { recursive: true, force: true });
});

/** Start `nodes` nodes, load the primary with redis-benchmark, perf-record `seconds` of it. */
async function measure(nodes) {
  const c = await ProcessCluster.start({ nodes, mode: nodes === 1 ? 'rsm' : o.mode, heartbeatMs: 50, failureTimeoutMs: 1000, wrap: () => [shim] });
  clusters.push(c);
  try {
    let st;
    await c.waitFor(async () => (st = await c.statuses()).every((x) => x !== null && x.role !== 'booting'), 30_000, 'every node to answer /status');
    const roles = Object.fromEntries(c.nodes.map((n, i) => [st[i].role, n.child.pid]));
    for (const n of c.nodes) perfMaps.add(`/tmp/perf-${n.child.pid}.map`);
    const port = c.nodes[st.findIndex((s) => s.role === 'primary')].client.port;
    const bench = spawn('redis-benchmark', ['-p', String(port), '-t', o.op, '-n', String(o.n), '-c', String(o.conc), '-r', '100000', '--csv'], { stdio: ['ignore', 'pipe', 'ignore'] });
    children.add(bench);
    let out = '';
    bench.stdout.on('data', (d) => (out += d));
    const closed = new Promise((r) => bench.on('close', r));
    await new Promise((r) => setTimeout(r, o.warmup * 1000)); // the JIT has settled (its compiler threads count as the process's CPU)
    const data = join(tmp, `perf-${nodes}.data`);
    log(`${nodes === 1 ? '1 node' : `replicated ${o.mode}`}: perf record ${o.seconds} s of redis-benchmark ${o.op} -c ${o.conc}`);
    const rec = spawnSync('perf', ['record', '-a', '-g', '-e', 'cpu-clock', '-F', String(HZ), '-o', data, '--', 'sleep', String(o.seconds)], { stdio: ['ignore', 'ignore', 'pipe'] });
    if (rec.status !== 0) throw new Error(`perf record failed: ${rec.stderr}`);
    await closed;
    children.delete(bench);
    if (bench.exitCode !== 0) throw new Error(`redis-benchmark exited ${bench.exitCode}: did it finish before perf did? raise --n`);
    const row = out.split('\n').map((l) => l.split(',').map((x) => x.replace(/"/g, ''))).find((f) => f[0] === o.op.toUpperCase());
    const rps = Number(row?.[1]);
    const attr = await attribute(data, new Map([...Object.entries(roles).map(([role, pid]) => [String(pid), role]), [String(bench.pid), 'redis-benchmark']]));
    return { rps, ops: rps * o.seconds, attr };
  } finally {
    await c.stop();
  }
}

/** perf script → per process, samples by the innermost lockstep frame (or a category). */
async function attribute(data, names) {
  const ps = spawn('perf', ['script', '-i', data, '-F', 'pid,ip,sym,dso'], { stdio: ['ignore', 'pipe', 'ignore'] });
  children.add(ps);
  const per = new Map(); // role -> Map(key -> samples)
  let cur = null;
  const done = () => {
    if (cur === null) return;
    const role = names.get(cur.pid);
    if (role === undefined) return;
    const m = per.get(role) ?? new Map();
    per.set(role, m);
    const key = classify(cur.stack);
    m.set(key, (m.get(key) ?? 0) + 1);
    m.set('', (m.get('') ?? 0) + 1);
  };
  const rl = createInterface({ input: ps.stdout });
  for await (const line of rl) {
    if (line.trim() === '') continue;
    if (!line.startsWith('\t')) {
      done();
      cur = { pid: line.trim().split(/\s+/)[0], stack: [] };
    } else if (cur !== null) cur.stack.push(line.trim());
  }
  done();
  children.delete(ps);
  return per;
}

function classify(stack) {
  const own = stack.find((l) => /\/dist\/src\//.test(l));
  if (own) return own.replace(/^[0-9a-f]+ /, '').replace(/file:\/\/\/\S*?dist\/src\//, '').replace(/ \(.*\)$/, '').replace(/^JS:[*^~]?/, '');
  const has = (re) => stack.some((l) => re.test(l));
  if (has(/Scaveng|MarkCompact|Heap::|ConcurrentMarking|Sweep|GCTracer/)) return '(gc)';
  if (has(/epoll/)) return '(epoll: event loop waits and wake-ups)';
  if (has(/uv__read|__libc_read|ksys_read/)) return '(read: libuv reading a socket)';
  if (has(/uv__write|__libc_write|ksys_write/)) return '(write outside lockstep code)';
  if (has(/JS:/)) return '(node js)';
  if (has(/Compil|compiler::/)) return '(jit compiler)';
  return '(other)';
}

try {
  const single = await measure(1);
  const repl = await measure(3);
  const us = (samples, ops) => (samples * 1e6) / HZ / ops;
  console.log(`\nlockstep cpu-attr: redis-benchmark ${o.op.toUpperCase()} -c ${o.conc}, ${o.seconds} s of perf cpu-clock at ${HZ} Hz each; kv ${o.mode}`);
  console.log(`1 node: ${Math.round(single.rps)} ops/s; replicated: ${Math.round(repl.rps)} ops/s (ratio ${(repl.rps / single.rps).toFixed(2)})\n`);
  console.log('CPU µs per op by process:');
  for (const [name, r] of [['1 node', single], [`replicated ${o.mode}`, repl]]) {
    console.log(`  ${name}: ${[...r.attr].map(([role, m]) => `${role} ${us(m.get(''), r.ops).toFixed(1)}`).join(', ')}`);
  }
  const keys = new Set();
  for (const m of [single.attr.get('primary'), repl.attr.get('primary'), repl.attr.get('backup')]) for (const k of m?.keys() ?? []) if (k !== '') keys.add(k);
  const col = (m, k, ops) => (m?.get(k) ? us(m.get(k), ops).toFixed(2) : '');
  const rows = [...keys].map((k) => [k, col(single.attr.get('primary'), k, single.ops), col(repl.attr.get('primary'), k, repl.ops), col(repl.attr.get('backup'), k, repl.ops)]);
  rows.sort((a, b) => Number(b[2] || 0) + Number(b[3] || 0) - Number(a[2] || 0) - Number(a[3] || 0));
  console.log(`\nCPU µs per op by innermost lockstep function (top ${o.top}):\n`);
  console.log('| function | 1 node | replicated primary | replicated backup |\n|---|---|---|---|');
  for (const r of rows.slice(0, o.top)) console.log(`| ${r.join(' | ')} |`);
} catch (e) {
  console.error('cpu-attr failed:', e?.stack ?? e);
  process.exitCode = 1;
} finally {
  for (const c of clusters) await c.stop().catch(() => {});
  cleanup();
}

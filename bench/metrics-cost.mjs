#!/usr/bin/env node
// What the per-command metrics cost on the hot path, in one process, no I/O: nanoseconds per
// command for (a) nothing (the loop alone), (b) prom-client directly (histogram observe plus a
// labelled counter inc per command) and (c) what the node does (src/node/metrics.ts: the
// command's name and time into a batch; the batch into the same histogram and counters once
// per 100,000 here, once a second in the node). Alternating rounds; the median of each.
// Not a test: see bench/README.md.
//
//   npx tsc -p . && node bench/metrics-cost.mjs [--commands 2000000] [--rounds 7]

import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Counter, Histogram, Registry } from 'prom-client';

const DIST = fileURLToPath(new URL('../dist/src/node/metrics.js', import.meta.url));
if (!existsSync(DIST)) {
  console.error('dist/ is missing: build first with `npx tsc -p .`');
  process.exit(2);
}
const { NodeMetrics } = await import(DIST);

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i < 0 ? dflt : Number(process.argv[i + 1]);
};
const N = arg('--commands', 2_000_000);
const ROUNDS = arg('--rounds', 7);
const NAMES = ['SET', 'GET', 'INCR', 'SET', 'GET', 'GET', 'DEL', 'MGET'];
const BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10];

let sink = 0;
function loopOnly() {
  for (let i = 0; i < N; i++) sink += performance.now() - i * 1e-9 + NAMES[i & 7].length;
}

const reg = new Registry();
const h = new Histogram({ name: 'direct_latency_seconds', help: 'x', buckets: BUCKETS, registers: [reg] });
const c = new Counter({ name: 'direct_commands_total', help: 'x', labelNames: ['command'], registers: [reg] });
function direct() {
  for (let i = 0; i < N; i++) {
    const name = NAMES[i & 7];
    const ms = performance.now() - (performance.now() - 0.3);
    h.observe(ms / 1000);
    c.inc({ command: name.toLowerCase() });
  }
}

const m = new NodeMetrics({ currentRole: () => 'primary', gauges: () => undefined });
function batched() {
  for (let i = 0; i < N; i++) {
    m.command(NAMES[i & 7], performance.now() - 0.3);
    if (i % 100_000 === 99_999) m.tick();
  }
  m.tick();
}

const runs = { 'loop only': [], 'prom-client per command': [], 'batched (the node)': [] };
const fns = { 'loop only': loopOnly, 'prom-client per command': direct, 'batched (the node)': batched };
for (let r = 0; r < ROUNDS; r++) {
  for (const [k, f] of Object.entries(fns)) {
    const t0 = process.hrtime.bigint();
    f();
    runs[k].push(Number(process.hrtime.bigint() - t0) / N);
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const base = median(runs['loop only']);
console.log(`metrics cost, ${N} commands x ${ROUNDS} rounds, node ${process.version}; ns per command (median), and over the loop alone`);
for (const k of Object.keys(runs)) {
  const ns = median(runs[k]);
  console.log(`${k.padEnd(26)} ${ns.toFixed(1).padStart(8)} ns   +${(ns - base).toFixed(1).padStart(6)} ns`);
}
const d = median(runs['prom-client per command']) - base;
const b = median(runs['batched (the node)']) - base;
console.log(`batched / per command (added cost): ${(b / d).toFixed(2)}`);
if (sink === 42) console.log('');

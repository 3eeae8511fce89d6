#!/usr/bin/env node
// What durable mode costs (issue 11 item 3): a 3-node kv cluster of real processes (rsm), in
// memory and durable (every node's dataDir on the disk os.tmpdir() is on; check it is not a
// tmpfs), driven by lockstep/client clients doing SET of 100-byte values back to back, one
// command at a time each, for --seconds per measurement. Interleaved rounds: each round starts
// a fresh in-memory cluster, measures 1 and 16 clients, stops it, then the same on a durable
// one. Prints every run, then per setup the median ops/s and the median of the runs' p50
// latencies, and the ratio durable / in memory. Not a test: see bench/README.md.
//
//   npx tsc -p . && node bench/durable.mjs [--rounds 3] [--seconds 5] [--clients 1,16]

import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';

const DIST = fileURLToPath(new URL('../dist/src/', import.meta.url));
if (!existsSync(`${DIST}testing/process-cluster.js`)) {
  console.error('dist/ is missing: build first with `npx tsc -p .`');
  process.exit(2);
}
const { ProcessCluster } = await import(`${DIST}testing/process-cluster.js`);
const { LockstepClient } = await import(`${DIST}client/index.js`);

const argOf = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i < 0 ? dflt : process.argv[i + 1];
};
const ROUNDS = Number(argOf('--rounds', '3'));
const SECONDS = Number(argOf('--seconds', '5'));
const CLIENTS = argOf('--clients', '1,16').split(',').map(Number);
const VALUE = 'v'.repeat(100);

async function measure(cluster, clients) {
  const lat = [];
  let ops = 0;
  const end = performance.now() + SECONDS * 1000;
  const one = async (c) => {
    const client = new LockstepClient({ nodes: cluster.clientAddresses(), commandTimeoutMs: 20_000 });
    try {
      await client.call('SET', `warm${c}`, VALUE);
      for (let i = 0; performance.now() < end; i++) {
        const t0 = performance.now();
        await client.call('SET', `k${c}.${i % 1000}`, VALUE);
        lat.push(performance.now() - t0);
        ops++;
      }
    } finally {
      client.close();
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, (_, c) => one(c)));
  const secs = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return { opsPerSec: ops / secs, p50: lat[Math.floor(lat.length / 2)] ?? NaN, p99: lat[Math.floor(lat.length * 0.99)] ?? NaN };
}

const results = new Map(); // `${setup} ${clients}` -> runs
console.log(`durable mode cost: 3 nodes (rsm), SET of ${VALUE.length}-byte values, ${SECONDS} s per run, ${ROUNDS} interleaved rounds, node ${process.version}, data under ${tmpdir()}`);
for (let r = 1; r <= ROUNDS; r++) {
  for (const setup of ['memory', 'durable']) {
    const cluster = await ProcessCluster.start({ durable: setup === 'durable', failureTimeoutMs: 1500, heartbeatMs: 50 });
    try {
      for (const c of CLIENTS) {
        const m = await measure(cluster, c);
        const key = `${setup} ${c}`;
        results.set(key, [...(results.get(key) ?? []), m]);
        console.log(`round ${r}  ${setup.padEnd(8)} ${String(c).padStart(2)} clients  ${m.opsPerSec.toFixed(0).padStart(6)} ops/s  p50 ${m.p50.toFixed(2)} ms  p99 ${m.p99.toFixed(2)} ms`);
      }
    } finally {
      await cluster.stop();
    }
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log('\nmedians                 ops/s     p50 ms');
for (const c of CLIENTS) {
  const mem = results.get(`memory ${c}`);
  const dur = results.get(`durable ${c}`);
  const row = (name, runs) => console.log(`${name.padEnd(8)} ${String(c).padStart(2)} clients  ${median(runs.map((x) => x.opsPerSec)).toFixed(0).padStart(8)}  ${median(runs.map((x) => x.p50)).toFixed(2).padStart(8)}`);
  row('memory', mem);
  row('durable', dur);
  const ops = median(dur.map((x) => x.opsPerSec)) / median(mem.map((x) => x.opsPerSec));
  const p50 = median(dur.map((x) => x.p50)) / median(mem.map((x) => x.p50));
  console.log(`durable / memory, ${c} clients: ops/s x${ops.toFixed(2)}, p50 x${p50.toFixed(2)}`);
}

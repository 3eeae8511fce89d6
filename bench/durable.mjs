#!/usr/bin/env node
// What durable mode costs (issue 11 item 3): a 3-node kv cluster of real processes (rsm), in
// memory and durable (every node's dataDir on the disk os.tmpdir() is on; check it is not a
// tmpfs), driven by lockstep/client clients doing SET of 100-byte values back to back, one
// command at a time each, for --seconds per measurement. Interleaved rounds: each round starts
// a fresh in-memory cluster, measures 1 and 16 clients, stops it, then the same on a durable
// one. Prints every run, then per setup the median ops/s and the median of the runs' p50
// latencies, and the ratio durable / in memory. Not a test: see bench/README.md.
//
//   npx tsc -p . && node bench/durable.mjs [--rounds 3] [--seconds 5] [--clients 1,16] [--setups memory,durable]
//
// --setups may also name `durable-nobacklog`: durable with durableBacklogBytes 1, so that the
// in-memory backlog kept for resuming a node back from a restart is (almost) always empty; its
// ratio to `durable` is what keeping 64 MiB of recent entries costs.

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
const SETUPS = argOf('--setups', 'memory,durable').split(',');
const SETUP_OPTS = {
  memory: {},
  durable: { durable: true },
  'durable-nobacklog': { durable: true, extra: { durableBacklogBytes: 1 } },
};
for (const s of SETUPS) if (!(s in SETUP_OPTS)) throw new Error(`--setups: unknown setup ${s}; one of ${Object.keys(SETUP_OPTS).join(', ')}`);
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
  // The order rotates each round, so that no setup always runs first (the disk's state drifts).
  for (const setup of [...SETUPS.slice((r - 1) % SETUPS.length), ...SETUPS.slice(0, (r - 1) % SETUPS.length)]) {
    const cluster = await ProcessCluster.start({ ...SETUP_OPTS[setup], failureTimeoutMs: 1500, heartbeatMs: 50 });
    try {
      for (const c of CLIENTS) {
        const m = await measure(cluster, c);
        const key = `${setup} ${c}`;
        results.set(key, [...(results.get(key) ?? []), m]);
        const rss = (await cluster.primary())?.rssBytes;
        console.log(`round ${r}  ${setup.padEnd(8)} ${String(c).padStart(2)} clients  ${m.opsPerSec.toFixed(0).padStart(6)} ops/s  p50 ${m.p50.toFixed(2)} ms  p99 ${m.p99.toFixed(2)} ms  primary RSS ${rss === undefined ? '?' : (rss / 2 ** 20).toFixed(0)} MiB`);
      }
    } finally {
      await cluster.stop();
    }
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log('\nmedians                           ops/s     p50 ms');
const [base, ...others] = SETUPS;
for (const c of CLIENTS) {
  const med = (setup, f) => median(results.get(`${setup} ${c}`).map(f));
  for (const setup of SETUPS) console.log(`${setup.padEnd(18)} ${String(c).padStart(2)} clients  ${med(setup, (x) => x.opsPerSec).toFixed(0).padStart(8)}  ${med(setup, (x) => x.p50).toFixed(2).padStart(8)}`);
  for (const setup of others) {
    const ops = med(setup, (x) => x.opsPerSec) / med(base, (x) => x.opsPerSec);
    const p50 = med(setup, (x) => x.p50) / med(base, (x) => x.p50);
    console.log(`${setup} / ${base}, ${c} clients: ops/s x${ops.toFixed(2)}, p50 x${p50.toFixed(2)}`);
  }
}

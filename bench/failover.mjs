// bench/failover.mjs: how long a failover takes, from kill -9 of the primary to the first
// acknowledged write, with the file arbiter and with a 3-member etcd (real etcd processes on
// loopback), in one run, several repetitions each. Every repetition is a fresh 3-node lockstep
// cluster (heartbeat 30 ms, failure timeout 300 ms) with 4 clients writing (LockstepClient,
// attempt timeout 200 ms); the time is kill -9 to the first ack of a write sent after it.
// Prints a table on stdout (progress on stderr). Needs a build (npx tsc -p .) and, for the etcd
// rows, etcd-server. Usage: node bench/failover.mjs [--reps N]

import { ProcessCluster } from '../dist/src/testing/process-cluster.js';
import { EtcdCluster, etcdMissing } from '../dist/src/testing/etcd-cluster.js';
import { LockstepClient } from '../dist/src/client/index.js';

const reps = Number(process.argv[process.argv.indexOf('--reps') + 1] || 0) || 7;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function once(arbiter) {
  const cluster = await ProcessCluster.start({ nodes: 3, arbiter });
  const clients = [];
  try {
    const primary = await cluster.primary();
    let stopping = false;
    let killedAt = Infinity;
    let firstAck = Infinity;
    const writers = Array.from({ length: 4 }, async (_, i) => {
      const c = new LockstepClient({ nodes: cluster.clientAddresses(), attemptTimeoutMs: 200, commandTimeoutMs: 30_000 });
      clients.push(c);
      for (let n = 0; !stopping; n++) {
        const issued = performance.now();
        await c.set(`k${i}`, String(n));
        const t = performance.now();
        // Only a write sent after the kill counts: one in flight may be acked by the old primary.
        if (issued > killedAt && t < firstAck) firstAck = t;
      }
    });
    await sleep(700);
    killedAt = performance.now();
    cluster.signal(primary.id, 'SIGKILL');
    const deadline = Date.now() + 30_000;
    while (firstAck === Infinity && Date.now() < deadline) await sleep(5);
    stopping = true;
    await Promise.all(writers);
    return firstAck - killedAt;
  } finally {
    for (const c of clients) c.close();
    await cluster.stop();
  }
}

const setups = [{ name: 'file', start: async () => ({ spec: undefined, stop: async () => {} }) }];
const missing = etcdMissing();
if (missing) process.stderr.write(`skipping etcd: ${missing}\n`);
else setups.push({ name: 'etcd (3 members)', start: async () => { const e = await EtcdCluster.start({ members: 3 }); return { spec: e.spec(), stop: () => e.stop() }; } });

const rows = [];
for (const s of setups) {
  const env = await s.start();
  const times = [];
  try {
    for (let i = 0; i < reps; i++) {
      // A fresh cluster name per repetition, so every run bootstraps a new view on the same etcd.
      const ms = await once(env.spec === undefined ? undefined : `${env.spec}/bench${i}`);
      times.push(ms);
      process.stderr.write(`${s.name} #${i + 1}: ${ms.toFixed(1)} ms\n`);
    }
  } finally {
    await env.stop();
  }
  times.sort((a, b) => a - b);
  const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
  rows.push({ name: s.name, n: times.length, min: times[0], median: q(0.5), max: times[times.length - 1], mean: times.reduce((a, b) => a + b, 0) / times.length });
}
console.log('| arbiter | runs | min ms | median ms | mean ms | max ms |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.name} | ${r.n} | ${r.min.toFixed(0)} | ${r.median.toFixed(0)} | ${r.mean.toFixed(0)} | ${r.max.toFixed(0)} |`);

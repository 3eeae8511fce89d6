// bench/peer-tls.mjs: what mutual TLS on the peer port (peerTls) costs a replicated cluster.
// Two 3-node clusters running side by side, the same but for peerTls (both with secretFile;
// heartbeat 50 ms, failure timeout 1000 ms), loaded in turn: C ioredis connections to the primary, each
// sending its next SET when the previous one answered (every reply waits for the backup's ack
// over the peer link), for --seconds after a 1 s warm-up, at two value sizes, --rounds times.
// Reported: the median ops/s, p50 and p99 (ms, measured in this process), and ops/s with TLS /
// without (of the medians, and of each round).
// Needs a build (npx tsc -p .) and openssl (Debian's openssl) for the certificates.
// Usage: node bench/peer-tls.mjs [--seconds 5] [--conc 16] [--rounds 3]
// Every node is killed and every temp dir removed, also on an error and on Ctrl-C.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { ProcessCluster } from '../dist/src/testing/process-cluster.js';
import { HAVE_OPENSSL, makeCa, makeCert } from '../dist/src/testing/certs.js';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i < 0 ? dflt : Number(process.argv[i + 1]);
};
const seconds = arg('--seconds', 5);
const conc = arg('--conc', 16);
const rounds = arg('--rounds', 3);
if (!HAVE_OPENSSL) {
  console.error('bench/peer-tls.mjs needs openssl (apt-get install openssl)');
  process.exit(2);
}

const dir = mkdtempSync(join(tmpdir(), 'lockstep-bench-peer-tls-'));
const clusters = new Set();
const cleanup = async () => {
  await Promise.all([...clusters].map((c) => c.stop()));
  rmSync(dir, { recursive: true, force: true });
};
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => void cleanup().then(() => process.exit(130)));

/** C closed-loop SET workers for `seconds` after a 1 s warm-up: ops/s, p50, p99. */
async function load(port, value) {
  const conns = Array.from({ length: conc }, () => new Redis({ port, host: '127.0.0.1', lazyConnect: true, enableOfflineQueue: true, maxRetriesPerRequest: 0 }));
  await Promise.all(conns.map((c) => c.connect()));
  const lat = [];
  let measuring = false;
  let stop = false;
  const workers = conns.map(async (c, w) => {
    for (let i = 0; !stop; i++) {
      const t = performance.now();
      await c.set(`k${w}:${i % 1000}`, value);
      if (measuring) lat.push(performance.now() - t);
    }
  });
  await new Promise((r) => setTimeout(r, 1000));
  measuring = true;
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  measuring = false;
  const elapsed = (performance.now() - t0) / 1000;
  stop = true;
  await Promise.all(workers);
  conns.forEach((c) => c.disconnect());
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
  return { ops: lat.length / elapsed, p50: q(0.5), p99: q(0.99) };
}

try {
  const caFile = makeCa(dir);
  const node = makeCert(dir, 'node');
  const setups = [];
  for (const [name, extra] of [['plain', {}], ['peerTls', { peerTls: { ...node, caFile } }]]) {
    const cluster = await ProcessCluster.start({ heartbeatMs: 50, failureTimeoutMs: 1000, extra });
    clusters.add(cluster);
    const primary = await cluster.primary();
    setups.push({ name, cluster, primary, port: cluster.node(primary.id).client.port });
  }
  // Both clusters run the whole time; the loads alternate between them, so a change in the
  // machine's other load falls on both. Each cell: the median of --rounds.
  const results = new Map();
  for (let round = 1; round <= rounds; round++) {
    for (const bytes of [16, 16 * 1024]) {
      for (const s of setups) {
        console.error(`round ${round}: ${s.name}, ${bytes} B values, ${conc} connections, ${seconds} s ...`);
        const key = `${s.name} ${bytes}`;
        results.set(key, [...(results.get(key) ?? []), await load(s.port, 'x'.repeat(bytes))]);
      }
    }
  }
  for (const s of setups) {
    const after = await s.cluster.primary();
    if (after?.id !== s.primary.id || after.epoch !== s.primary.epoch) console.error(`note: ${s.name}: the view changed during the run; its numbers include a failover`);
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`node ${process.version}; ${conc} connections, SET, ${seconds} s each after 1 s warm-up, median of ${rounds} alternating rounds`);
  console.log(`${'setup'.padEnd(8)} ${'value'.padStart(8)} ${'ops/s'.padStart(9)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)}  tls/plain ops/s (each round)`);
  for (const bytes of [16, 16 * 1024]) {
    const plain = results.get(`plain ${bytes}`);
    for (const s of setups) {
      const r = results.get(`${s.name} ${bytes}`);
      const ratios = s.name === 'plain' ? '' : `${(median(r.map((x) => x.ops)) / median(plain.map((x) => x.ops))).toFixed(2)} (${r.map((x, i) => (x.ops / plain[i].ops).toFixed(2)).join(', ')})`;
      console.log(`${s.name.padEnd(8)} ${`${bytes} B`.padStart(8)} ${median(r.map((x) => x.ops)).toFixed(0).padStart(9)} ${median(r.map((x) => x.p50)).toFixed(2).padStart(8)} ${median(r.map((x) => x.p99)).toFixed(2).padStart(8)}  ${ratios}`);
    }
  }
} finally {
  await cleanup();
}

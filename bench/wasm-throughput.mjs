// Guest request throughput, replicated vs unreplicated: the C key/value server
// (examples/kvserver) under lockstep, driven over TCP by closed-loop clients.
//
//   npm run build && node bench/wasm-throughput.mjs [--seconds 5] [--clients 16,64] [--depth 1,16] [--reps 1]
//
// unreplicated: a one-node cluster (the guest records its log, but there is no backup, so
//               every output goes out at once);
// replicated:   primary + backup; every reply waits for the backup's ack of its records.
// Every client sends SET then GET on its own keys; with depth D it keeps D requests in flight.
// All processes (clients, primary, backup) share this machine's cores.
import { fileURLToPath } from 'node:url';
import { ProcessCluster, freePorts } from '../dist/src/testing/process-cluster.js';
import { LineClient } from '../dist/src/testing/line-client.js';

const list = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return (i >= 0 ? process.argv[i + 1] : dflt).split(',').map(Number);
};
const SECONDS = list('--seconds', '5')[0];
const CLIENTS = list('--clients', '16,64');
const DEPTHS = list('--depth', '1,16');
const REPS = list('--reps', '1')[0];
const module = fileURLToPath(new URL('../examples/kvserver/kvserver.wasm', import.meta.url));

async function measure(nodes, clients, depth) {
  const [port] = await freePorts(1);
  const addr = { host: '127.0.0.1', port };
  const c = await ProcessCluster.start({
    nodes,
    service: { kind: 'wasm', module, listen: [`127.0.0.1:${port}`], memoryLimitMb: 64 },
    heartbeatMs: 50,
    failureTimeoutMs: 2000,
  });
  try {
    const conns = [];
    for (let i = 0; i < clients; i++) conns.push(await LineClient.connectRetry(addr, 20_000));
    let done = 0;
    let stop = false;
    const run = async (cl, i) => {
      for (let k = 0; !stop; k++) {
        for (let d = 0; d < depth; d++) cl.send(d % 2 === 0 ? `SET c${i}k${d} v${k}` : `GET c${i}k${d - 1}`);
        for (let d = 0; d < depth; d++) await cl.next();
        done += depth;
      }
    };
    // Warm up for a second (the guest's functions get compiled), then measure.
    const loops = conns.map((cl, i) => run(cl, i));
    await new Promise((r) => setTimeout(r, 1000));
    const start = done;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    const rate = ((done - start) * 1000) / (performance.now() - t0);
    stop = true;
    await Promise.all(loops);
    conns.forEach((cl) => cl.close());
    const s = await c.statuses();
    const primary = s.find((x) => x?.role === 'primary');
    return { rate, calls: primary?.guest?.calls ?? 0 };
  } finally {
    await c.stop();
  }
}

const rows = [];
for (let rep = 0; rep < REPS; rep++) {
  for (const clients of CLIENTS) {
    for (const depth of DEPTHS) {
      const single = await measure(1, clients, depth);
      const repl = await measure(2, clients, depth);
      rows.push({ clients, depth, single: single.rate, repl: repl.rate });
      console.error(`clients ${clients} depth ${depth}: unreplicated ${single.rate.toFixed(0)}/s, replicated ${repl.rate.toFixed(0)}/s`);
    }
  }
}
console.log(`kvserver.wasm request throughput, ${SECONDS} s per point after 1 s warm-up, requests/s`);
console.log('| clients | depth | unreplicated (1 node) | replicated (primary + backup) | replicated / unreplicated |');
console.log('|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.clients} | ${r.depth} | ${r.single.toFixed(0)} | ${r.repl.toFixed(0)} | ${(r.repl / r.single).toFixed(2)}x |`);

// Reference: bare cross-thread round trip with Atomics (no wasm, no event loop on either side).
// Two workers bounce a counter N times. --spin=K: spin K loads before Atomics.wait.
import { Worker, isMainThread, workerData, parentPort } from 'node:worker_threads';
import { parseArgs, report } from './common.mjs';
if (!isMainThread) {
  const { sab, me, n, spin } = workerData;
  const c = new Int32Array(sab);
  parentPort.postMessage('ready');
  while (Atomics.load(c, 1) === 0) Atomics.wait(c, 1, 0);           // start signal
  const t0 = performance.now();
  for (let i = me; i < 2 * n; i += 2) {                              // my turn when c[0] === i
    for (let s = 0; s < spin && Atomics.load(c, 0) !== i; s++);
    let v;
    while ((v = Atomics.load(c, 0)) !== i) Atomics.wait(c, 0, v);
    Atomics.store(c, 0, i + 1); Atomics.notify(c, 0);
  }
  parentPort.postMessage(performance.now() - t0);
} else {
  const o = parseArgs(process.argv.slice(2));
  const sab = new SharedArrayBuffer(8), c = new Int32Array(sab);
  const ws = [0, 1].map((me) => new Worker(new URL(import.meta.url), { workerData: { sab, me, n: o.n, spin: o.spin ?? 0 } }));
  await Promise.all(ws.map((w) => new Promise((r) => w.once('message', r))));
  const done = ws.map((w) => new Promise((r) => w.once('message', r)));
  Atomics.store(c, 1, 1); Atomics.notify(c, 1);
  const ms = Math.max(...(await Promise.all(done)));
  report({ depth: 0, host: `atomics-pingpong${o.spin ? '-spin' + o.spin : ''}`, fn: '-', module: '-', size: 0, mode: 'wait', work: 0, n: o.n,
    us_per_call: (ms * 1000) / o.n, calls_per_s: Math.round(o.n / (ms / 1000)), hb_max_late_ms: 0, sum: 0 });
  await Promise.all(ws.map((w) => w.terminate()));
}

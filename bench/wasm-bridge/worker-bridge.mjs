// (A) worker bridge: the guest runs in a worker_thread. Each next_input call publishes a request
// in a SharedArrayBuffer, wakes the main thread, and Atomics.wait()s for the answer. The main
// thread answers from its event loop, so heartbeats keep running.
//   --notify=post       worker wakes main with postMessage (what the issue describes)
//   --notify=waitAsync  main waits with Atomics.waitAsync on the shared word (no message)
//   --spin=N            worker spins N loads before Atomics.wait
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { parseArgs, loadModule, fillRequest, startHeartbeat, sleep, immediate, report, REQ } from './common.mjs';

const IDLE = 0, REQUEST = 1, ANSWER = 2;

if (!isMainThread) {
  const { sab, file, notify, spin } = workerData;
  const ctrl = new Int32Array(sab, 0, 4);
  const data = new Uint8Array(sab, 16, REQ);
  const { module } = loadModule(file);
  let mem;
  const next_input = (ptr, len) => {
    Atomics.store(ctrl, 0, REQUEST);
    if (notify === 'post') parentPort.postMessage(0); else Atomics.notify(ctrl, 0);
    // optional: spin up to `spin` iterations before sleeping (saves the futex wake-up)
    for (let i = 0; i < spin && Atomics.load(ctrl, 0) === REQUEST; i++);
    while (Atomics.load(ctrl, 0) === REQUEST) Atomics.wait(ctrl, 0, REQUEST);   // block this thread only
    const got = ctrl[1];
    new Uint8Array(mem.buffer, ptr, len).set(data.subarray(0, got));
    Atomics.store(ctrl, 0, IDLE);
    return got;
  };
  const inst = new WebAssembly.Instance(module, { env: { next_input } });
  mem = inst.exports.memory;
  inst.exports._initialize?.();
  parentPort.on('message', ({ n, work }) => {
    const t0 = performance.now();
    const sum = inst.exports.run(n, work) >>> 0;
    parentPort.postMessage({ done: true, sum, workerMs: performance.now() - t0 });
  });
} else {
  const o = parseArgs(process.argv.slice(2));
  const { bytes } = loadModule(o.module);
  const sab = new SharedArrayBuffer(16 + REQ);
  const ctrl = new Int32Array(sab, 0, 4);
  const data = new Uint8Array(sab, 16, REQ);
  const w = new Worker(new URL(import.meta.url), { workerData: { sab, file: o.module, notify: o.notify, spin: o.spin ?? 0 } });
  let k = 0, done = null;

  const answer = () => {
    ctrl[1] = fillRequest(data, k++);
    Atomics.store(ctrl, 0, ANSWER);
    Atomics.notify(ctrl, 0);
  };
  // 'ready': input already queued, answer at once. 'wait': the input arrives a turn later.
  const onRequest = () => { if (o.mode === 'wait') setImmediate(answer); else answer(); };

  w.on('message', (m) => { if (m && m.done) done(m); else onRequest(); });
  let polling = false;
  async function pollLoop() {            // --notify=waitAsync: no messages per call
    polling = true;
    while (polling) {
      const v = Atomics.load(ctrl, 0);
      if (v === REQUEST) { onRequest(); if (o.mode === 'wait') await immediate(); continue; }
      const r = Atomics.waitAsync(ctrl, 0, v);
      if (r.async) await r.value;
    }
  }
  const run = (n) => new Promise((res) => {
    k = 0; done = (m) => { polling = false; Atomics.notify(ctrl, 0); res(m); };
    if (o.notify === 'waitAsync') pollLoop();
    w.postMessage({ n, work: o.work });
  });

  await run(o.warm);
  await sleep(30);
  const hb = startHeartbeat();
  await sleep(25);
  const t0 = performance.now();
  const m = await run(o.n);
  const dt = performance.now() - t0;
  const h = await hb.stop();
  report({ depth: 0, host: `worker-${o.notify}${o.spin ? '-spin' + o.spin : ''}`, fn: 'run', module: o.module, size: bytes.length, mode: o.mode, work: o.work, n: o.n,
    us_per_call: (dt * 1000) / o.n, calls_per_s: Math.round(o.n / (dt / 1000)), hb_max_late_ms: h.maxLateMs, sum: m.sum, answered: k });
  await w.terminate();
}

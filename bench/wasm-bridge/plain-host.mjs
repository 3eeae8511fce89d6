// Baseline: synchronous import on the main thread, no bridge. Input is always ready.
// (It cannot "wait": a blocking host call here would block the event loop.)
import { parseArgs, loadModule, fillRequest, startHeartbeat, sleep, report } from './common.mjs';

const o = parseArgs(process.argv.slice(2));
const { module, bytes } = loadModule(o.module);
let mem, k = 0;
const inst = new WebAssembly.Instance(module, {
  env: { next_input: (ptr, len) => fillRequest(new Uint8Array(mem.buffer, ptr, len), k++) },
});
mem = inst.exports.memory;
inst.exports._initialize?.();
const run = (fn, n) => { k = 0; return inst.exports[fn](n, o.work, o.depth) >>> 0; };

run(o.fn ?? 'run', o.warm);                       // JIT warm-up
await sleep(30);
const hb = startHeartbeat();
await sleep(25);
const t0 = performance.now();
const sum = run(o.fn ?? 'run', o.n);
const dt = performance.now() - t0;
const h = await hb.stop();
report({ depth: o.depth, host: 'plain', fn: o.fn ?? 'run', module: o.module, size: bytes.length, mode: 'ready', work: o.work, n: o.n,
  us_per_call: (dt * 1000) / o.n, calls_per_s: Math.round(o.n / (dt / 1000)), hb_max_late_ms: h.maxLateMs, sum });

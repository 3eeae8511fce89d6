// (B) asyncify: the guest runs on the main thread; when next_input has no input ready the
// import unwinds the guest's stack into a data buffer, the host awaits a Promise, then rewinds.
import { parseArgs, loadModule, fillRequest, startHeartbeat, sleep, immediate, report } from './common.mjs';

const o = parseArgs(process.argv.slice(2));
if (o.module === 'guest.wasm') o.module = 'guest.async.wasm';
const { module, bytes } = loadModule(o.module);

let ex, k = 0, unwinds = 0, lastYield = 0, sinceCheck = 0;  // clock read every 256 calls
let ready = 0;              // inputs queued and available right now
let pending = null;         // Promise the guest is waiting on while unwound
const STATE_UNWINDING = 1, STATE_REWINDING = 2;

// Input source. 'ready': every input is already queued. 'wait': the queue is empty when the
// guest asks; the next input arrives on a later event-loop turn (setImmediate).
function arrival() { return immediate().then(() => { ready++; }); }

function next_input(ptr, len) {
  if (ex.asyncify_get_state() === STATE_REWINDING) {
    ex.asyncify_stop_rewind();          // resumed: input has arrived, fall through
  } else if (o.mode === 'wait' && ready === 0) {
    const d = ex.async_area();
    const dv = new DataView(ex.memory.buffer);
    dv.setInt32(d, d + 8, true);                           // current position of saved stack
    dv.setInt32(d + 4, d + ex.async_area_size(), true);    // end of the area
    pending = arrival();
    unwinds++;
    ex.asyncify_start_unwind(d);
    return 0;                           // ignored: the guest unwinds
  } else if (o.mode === 'ready' && o.slice && (++sinceCheck & 255) === 0 && performance.now() - lastYield > o.slice) {
    // input is ready, but the guest has had the loop for `slice` ms: unwind anyway, yield a turn
    const d = ex.async_area();
    const dv = new DataView(ex.memory.buffer);
    dv.setInt32(d, d + 8, true);
    dv.setInt32(d + 4, d + ex.async_area_size(), true);
    pending = immediate().then(() => { ready++; lastYield = performance.now(); });
    unwinds++;
    ex.asyncify_start_unwind(d);
    return 0;
  } else if (o.mode === 'ready') {
    ready++;
  }
  ready--;
  return fillRequest(new Uint8Array(ex.memory.buffer, ptr, len), k++);
}

const inst = new WebAssembly.Instance(module, { env: { next_input } });
ex = inst.exports;
ex._initialize?.();

async function callAsync(fn, ...args) {
  let r = ex[fn](...args);
  while (ex.asyncify_get_state() === STATE_UNWINDING) {
    ex.asyncify_stop_unwind();
    await pending;
    ex.asyncify_start_rewind(ex.async_area());
    r = ex[fn](...args);
  }
  return r >>> 0;
}
const run = async (fn, n) => { k = 0; ready = 0; unwinds = 0; lastYield = performance.now(); return callAsync(fn, n, o.work, o.depth); };

await run(o.fn ?? 'run', o.warm);
await sleep(30);
const hb = startHeartbeat();
await sleep(25);
const t0 = performance.now();
const sum = await run(o.fn ?? 'run', o.n);
const dt = performance.now() - t0;
const h = await hb.stop();
report({ depth: o.depth, host: o.slice ? `asyncify-slice${o.slice}ms` : 'asyncify', fn: o.fn ?? 'run', module: o.module, size: bytes.length, mode: o.mode, work: o.work, n: o.n,
  unwinds, us_per_call: (dt * 1000) / o.n, calls_per_s: Math.round(o.n / (dt / 1000)), hb_max_late_ms: h.maxLateMs, sum });

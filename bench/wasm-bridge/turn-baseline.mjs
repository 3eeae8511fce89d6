// Reference: the cost of one event-loop turn (await setImmediate) with no guest at all.
// The "wait" rows of both bridges include one such turn per call.
import { parseArgs, startHeartbeat, sleep, immediate, report } from './common.mjs';
const o = parseArgs(process.argv.slice(2));
for (let i = 0; i < o.warm; i++) await immediate();
await sleep(30);
const hb = startHeartbeat();
await sleep(25);
const t0 = performance.now();
for (let i = 0; i < o.n; i++) await immediate();
const dt = performance.now() - t0;
const h = await hb.stop();
report({ depth: 0, host: 'loop-turn-only', fn: '-', module: '-', size: 0, mode: 'wait', work: 0, n: o.n,
  us_per_call: (dt * 1000) / o.n, calls_per_s: Math.round(o.n / (dt / 1000)), hb_max_late_ms: h.maxLateMs, sum: 0 });

// What recruiting a backup costs, by the log since the guest started versus by a snapshot of the
// whole guest (issue 4 item 4), for a guest that has made many logged host calls.
//
//   npm run build && node bench/wasm-recruit.mjs [--calls 1000000] [--state 65536,8388608]
//
// The guest (written here in WAT, instrumented by lockstep's own loader with asyncify) loops
// forever calling clock_time_get and storing each reading in a ring buffer of --state bytes:
// a service whose state stays bounded while its log grows with every call. It runs in record
// mode under GuestRuntime until it has made --calls logged calls; the sink then closes flow
// control, so the guest is suspended there, as a primary's guest is whenever the node handles
// an event. Then, for each way of recruiting:
//   (i)  whole log: encode every entry as the wasm front's 'L' snapshot, then a fresh replay
//        runtime decodes and replays all of them until it waits for the next record;
//   (ii) guest snapshot: GuestRuntime.snapshot(), then GuestRuntime.restore() into a fresh
//        replay runtime in another directory, run until it waits for the next record.
// Both recruits must end with the primary's memory hash. Times are wall-clock on this machine,
// one run each (after a warm-up of the code paths on a small guest); sizes are exact.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModule } from '../dist/src/wasm/module.js';
import { GuestRuntime } from '../dist/src/wasm/runtime.js';
import { WasiHost } from '../dist/src/wasm/wasi.js';
import { decodeEntry } from '../dist/src/wasm/log.js';
import { ByteReader, ByteWriter } from '../dist/src/guest/bytes.js';

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const CALLS = Number(arg('calls', '1000000'));
const STATES = arg('state', '65536,8388608').split(',').map(Number);
const dirs = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'lockstep-recruit-'));
  dirs.push(d);
  return d;
};
process.on('exit', () => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** The guest: clock_time_get in a loop, each reading stored in a ring of `ringBytes` (a power of two). */
function guestWat(ringBytes) {
  const ringBase = 1 << 20; // above the 1 MiB shadow stack
  const pages = Math.ceil((ringBase + ringBytes) / 65536) + 1;
  return `(module
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") ${pages})
  (global $__stack_pointer (mut i32) (i32.const ${ringBase}))
  (global $i (mut i32) (i32.const 0))
  (func (export "_start")
    (loop $again
      (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 64)))
      (i64.store
        (i32.add (i32.const ${ringBase}) (i32.and (i32.shl (global.get $i) (i32.const 3)) (i32.const ${ringBytes - 1})))
        (i64.load (i32.const 64)))
      (global.set $i (i32.add (global.get $i) (i32.const 1)))
      (br $again))))`;
}

async function loadGuest(ringBytes) {
  const binaryen = (await import('binaryen')).default;
  const mod = binaryen.parseText(guestWat(ringBytes));
  const bytes = mod.emitBinary();
  mod.dispose();
  return loadModule(bytes, { maxMemoryPages: 4096 });
}

function newHost(root, mode, rt) {
  return new WasiHost({ args: ['recruit'], env: [], root, listen: [], mode, output: (e) => rt().onOutput(e), stdout() {}, stderr() {} });
}

/** Resolve once `cond` holds, checking every event-loop turn (the guest runs in slices). */
async function until(cond) {
  while (!cond()) await new Promise((r) => setImmediate(r));
}

/** Record until the guest has made `calls` logged calls; it stays suspended on flow control. */
async function record(loaded, calls) {
  const entries = [];
  let rt = null;
  const host = newHost(tempDir(), 'live', () => rt);
  rt = new GuestRuntime({
    loaded, host, mode: 'record', sink: {
      canRecord: () => rt.callCount < calls,
      whenCanRecord: () => new Promise(() => {}), // never: the guest waits here for good
      append: (p) => entries.push(p),
      output: () => {},
    },
  });
  const t0 = performance.now();
  void rt.run();
  await until(() => rt.callCount >= calls);
  // One more turn: the guest has unwound and its last batch is flushed.
  await new Promise((r) => setImmediate(r));
  return { rt, host, entries, ms: performance.now() - t0 };
}

/** (i) The wasm front's 'L' snapshot: encode, decode, replay from the start. */
async function viaLog(loaded, primary) {
  const t0 = performance.now();
  const w = new ByteWriter(primary.entries.reduce((n, e) => n + e.length + 8, 16));
  w.u8(0x4c).varuint(primary.entries.length);
  for (const e of primary.entries) w.bytes(e);
  const snap = w.finish();
  const takeMs = performance.now() - t0;

  const t1 = performance.now();
  let rt = null;
  const host = newHost(tempDir(), 'replay', () => rt);
  rt = new GuestRuntime({ loaded, host, mode: 'replay' });
  const r = new ByteReader(snap.subarray(1), 'log snapshot');
  const n = r.varuint();
  void rt.run();
  for (let i = 0; i < n; i++) rt.feed(decodeEntry(r.bytes()));
  await until(() => rt.callCount >= primary.rt.callCount && rt.backlog === 0);
  const installMs = performance.now() - t1;
  check(rt, primary, 'log replay');
  rt.stop();
  host.close();
  return { bytes: snap.length, takeMs, installMs };
}

/** (ii) A snapshot of the whole guest: take, restore, resume until it waits for a record. */
async function viaSnapshot(loaded, primary) {
  const t0 = performance.now();
  const snap = primary.rt.snapshot();
  const takeMs = performance.now() - t0;

  const t1 = performance.now();
  let rt = null;
  const host = newHost(tempDir(), 'replay', () => rt);
  rt = GuestRuntime.restore({ loaded, host, mode: 'replay' }, snap);
  const before = rt.stats.suspends;
  void rt.run();
  await until(() => rt.stats.suspends > before); // rewound, retried its call, now waits for the log
  const installMs = performance.now() - t1;
  check(rt, primary, 'snapshot restore');
  rt.stop();
  host.close();
  return { bytes: snap.length + 1, takeMs, installMs };
}

function check(rt, primary, what) {
  if (rt.callCount !== primary.rt.callCount || rt.memoryHash() !== primary.rt.memoryHash()) {
    throw new Error(`${what}: ended at call ${rt.callCount} with memory ${rt.memoryHash()}, not ${primary.rt.callCount} / ${primary.rt.memoryHash()}`);
  }
}

const mb = (n) => `${(n / 1e6).toFixed(2)} MB`;
const ms = (n) => `${n.toFixed(0)} ms`;

async function main() {
  // Warm-up: the same code paths on a small run, so the first row is not charged for JIT tiers.
  {
    const loaded = await loadGuest(65536);
    const p = await record(loaded, 20_000);
    await viaLog(loaded, p);
    await viaSnapshot(loaded, p);
    p.host.close();
  }
  const rows = [];
  for (const state of STATES) {
    const loaded = await loadGuest(state);
    process.stderr.write(`recording ${CALLS} calls with a ${state}-byte ring...\n`);
    const p = await record(loaded, CALLS);
    const log = await viaLog(loaded, p);
    const snap = await viaSnapshot(loaded, p);
    rows.push({ state, calls: p.rt.callCount, recordMs: p.ms, entries: p.entries.length, log, snap });
    p.host.close();
  }
  console.log(`recruiting a backup of a guest that made N logged host calls (clock_time_get), node ${process.version}\n`);
  console.log('| guest state (ring) | N calls | record N | way | snapshot size | take | install (restore + catch up) |');
  console.log('|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const head = `| ${mb(r.state)} | ${r.calls} | ${ms(r.recordMs)}`;
    console.log(`${head} | (i) whole log, ${r.entries} entries | ${mb(r.log.bytes)} | ${ms(r.log.takeMs)} | ${ms(r.log.installMs)} |`);
    console.log(`${head} | (ii) guest snapshot | ${mb(r.snap.bytes)} | ${ms(r.snap.takeMs)} | ${ms(r.snap.installMs)} |`);
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);

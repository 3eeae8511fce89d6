// Host-call overhead of the WebAssembly hypervisor: plain vs record vs replay, with node:wasi
// (no record/replay, no asyncify) as an outside reference, all in one process and one run.
//
//   npm run build && node bench/wasm-calls/run.mjs [--n 200000] [--reps 3] [--kinds open,stat]
//                                                  [--baseline /path/to/other/dist]
//
// --baseline runs every lockstep row a second time, interleaved, with the hypervisor built in
// another checkout (its dist/ directory), and prints new/baseline ratios: a before/after in one
// run, on the same load.
//
// Each row runs bench/wasm-calls/calls.wasm making N host calls of one kind; µs/call is the
// whole run's wall time over N (the loop around the call is a few ns). Median of the reps.
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WASI } from 'node:wasi';
import { loadModule } from '../../dist/src/wasm/module.js';
import { recordLocally, replayLocally } from '../../dist/src/wasm/local.js';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const N = arg('--n', 200000);
const REPS = arg('--reps', 3);
const argText = (name) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const KINDS = (argText('--kinds') ?? 'clock,random,file,stdout,open,stat').split(',');
const BASELINE = argText('--baseline');
const bytes = readFileSync(new URL('./calls.wasm', import.meta.url));
const loaded = await loadModule(bytes, { maxMemoryPages: 256 });
const base = BASELINE === undefined ? null : await (async () => {
  const m = await import(join(BASELINE, 'src/wasm/module.js'));
  const l = await import(join(BASELINE, 'src/wasm/local.js'));
  return { loaded: await m.loadModule(bytes, { maxMemoryPages: 256 }), recordLocally: l.recordLocally, replayLocally: l.replayLocally };
})();
const plainModule = await WebAssembly.compile(bytes);

const dirs = [];
const root = () => {
  const d = mkdtempSync(join(tmpdir(), 'lockstep-bench-'));
  dirs.push(d);
  return d;
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function nodeWasi(kind, n) {
  const out = openSync('/dev/null', 'w');
  const wasi = new WASI({ version: 'preview1', args: ['calls', String(n), kind], preopens: { '/': root() }, stdout: out, returnOnExit: true });
  const inst = await WebAssembly.instantiate(plainModule, wasi.getImportObject());
  const t0 = performance.now();
  wasi.start(inst);
  const ms = performance.now() - t0;
  closeSync(out);
  return ms;
}

/** plain, record and replay of one kind with one build of the hypervisor; times in ms. */
async function lockstepRun(impl, kind, n) {
  const g = { args: ['calls', String(n), kind] };
  const plain = (await impl.recordLocally(impl.loaded, { ...g, root: root() }, 'plain')).ms;
  const rec = await impl.recordLocally(impl.loaded, { ...g, root: root() });
  if (rec.end.kind !== 'exit' || rec.end.code !== 0) throw new Error(`record ${kind}: ${JSON.stringify(rec.end)}`);
  const rep = await impl.replayLocally(impl.loaded, { ...g, root: root() }, rec.entries);
  if (rep.memoryHash !== rec.memoryHash) throw new Error(`replay ${kind}: memory differs`);
  return { plain, record: rec.ms, replay: rep.ms, logBytes: rec.entries.reduce((s, e) => s + e.length, 0), entries: rec.entries.length };
}

const rows = [];
for (const kind of KINDS) {
  const n = kind === 'stdout' ? Math.floor(N / 4) : N;
  const t = { wasi: [], plain: [], record: [], replay: [], basePlain: [], baseRecord: [], baseReplay: [] };
  let logBytes = 0;
  let entries = 0;
  for (let r = 0; r < REPS; r++) {
    t.wasi.push(await nodeWasi(kind, n));
    const now = await lockstepRun({ loaded, recordLocally, replayLocally }, kind, n);
    t.plain.push(now.plain);
    t.record.push(now.record);
    t.replay.push(now.replay);
    logBytes = now.logBytes;
    entries = now.entries;
    if (base) {
      const b = await lockstepRun(base, kind, n);
      t.basePlain.push(b.plain);
      t.baseRecord.push(b.record);
      t.baseReplay.push(b.replay);
    }
  }
  const us = (ms) => (ms * 1000) / n;
  const m = Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.length ? us(median(v)) : NaN]));
  rows.push({ kind, n, ...m, logBytesPerCall: logBytes / n, entries });
}
for (const d of dirs) rmSync(d, { recursive: true, force: true });

console.log(`host-call overhead, N=${N} (stdout N/4), median of ${REPS}, µs per call; ratios against plain`);
console.log('| kind | node:wasi | plain | record | replay | record/plain | replay/plain | log bytes/call | log entries |');
console.log('|---|---|---|---|---|---|---|---|---|');
for (const r of rows) {
  const f = (x) => x.toFixed(3);
  console.log(`| ${r.kind} | ${f(r.wasi)} | ${f(r.plain)} | ${f(r.record)} | ${f(r.replay)} | ${(r.record / r.plain).toFixed(2)}x | ${(r.replay / r.plain).toFixed(2)}x | ${r.logBytesPerCall.toFixed(1)} | ${r.entries} |`);
}
if (base) {
  console.log(`\nagainst the baseline ${BASELINE} (same run, interleaved), µs per call; ratios new/baseline`);
  console.log('| kind | plain base | plain new | record base | record new | replay base | replay new | plain | record | replay |');
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const f = (x) => x.toFixed(3);
    const q = (a, b) => `${(a / b).toFixed(2)}x`;
    console.log(`| ${r.kind} | ${f(r.basePlain)} | ${f(r.plain)} | ${f(r.baseRecord)} | ${f(r.record)} | ${f(r.baseReplay)} | ${f(r.replay)} | ${q(r.plain, r.basePlain)} | ${q(r.record, r.baseRecord)} | ${q(r.replay, r.baseReplay)} |`);
  }
}
